"""The benchmark scripts' candidate lists: each entry is a valid recipe, and a teacher trains before its student."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]/'bench'))
import budget_study  # noqa: E402
from recipe_study import parse_variants  # noqa: E402


def test_every_budget_candidate_is_a_valid_recipe_and_its_teacher_trains_first():
    variants = parse_variants(budget_study.CANDIDATES)
    names = [name for name, _ in variants]
    assert len(names) == len(set(names))
    configs = budget_study.candidate_configs(budget_study.CANDIDATES, 'runs')
    assert [name for name, _ in configs] == names
    for i, ((name, over), (_, cfg)) in enumerate(zip(variants, configs)):
        assert cfg.arch == over['arch'] and cfg.folds == 5
        teacher = over.get('distill')
        if teacher is not None:
            assert teacher.startswith('@') and teacher[1:] in names[:i], f"{name}: teacher {teacher} is not an earlier candidate"
            assert cfg.distill == str(Path('runs')/teacher[1:])


def test_parse_variants_reads_names_and_typed_overrides():
    assert parse_variants('air:arch="airbench",ema=0.99,epochs=3;plain:') == [
        ('air', {'arch': 'airbench', 'ema': 0.99, 'epochs': 3}), ('plain', {})]
