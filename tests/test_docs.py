"""The docs' claims that name a test point at one that exists, so a table row cannot outlive the check behind it; the
study tables in the results are the ones their CSV files generate."""
import ast, re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tests_in(path):
    "Names of the test functions defined at the top level of a test file."
    return {n.name for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef) and n.name.startswith('test_')}


@pytest.mark.parametrize('doc', ['docs/reliability.md', 'README.md', 'docs/design.md'])
def test_every_test_a_doc_names_exists(doc):
    text = (ROOT/doc).read_text()
    named, last_file = [], None
    for file, name in re.findall(r'`(?:tests/)?(test_\w+\.py)?(?:::)?(test_\w+)`', text):  # `file.py::name`, or `name` of the file before
        last_file = file or last_file
        if last_file: named.append((last_file, name))
    missing = [f"{f}::{n}" for f, n in named if not (ROOT/'tests'/f).exists() or n not in _tests_in(ROOT/'tests'/f)]
    assert not missing, f"{doc} names tests that do not exist: {missing}"
    if doc == 'docs/reliability.md': assert len(named) >= 40


@pytest.mark.parametrize('doc', ['README.md', *(str(p.relative_to(ROOT)) for p in sorted((ROOT/'docs').glob('*.md'))), 'bench/README.md'])
def test_every_image_and_page_a_doc_links_to_exists(doc):
    text = (ROOT/doc).read_text()
    links = re.findall(r'\]\(([^)#\s]+)(?:#[^)]*)?\)', text)
    local = [l for l in links if '://' not in l and not l.startswith('mailto:')]
    missing = [l for l in local if not ((ROOT/doc).parent/l).exists()]
    assert not missing, f"{doc} links to files that do not exist: {missing}"


def _study_tables():
    "(CSV file or folder, the table its bench script generates from it) for every study CSV in docs/."
    import sys
    import pandas as pd
    sys.path.insert(0, str(ROOT/'bench'))
    import budget_adherence, ensemble_study, lever_ledger, method_study, noise_study, probe_tta, resume_budget, tta_study
    studies = [(p, method_study.study_markdown(pd.read_csv(p))) for p in sorted((ROOT/'docs').glob('*.csv'))
               if p.name.startswith(('study_', 'method_study', 'pseudo_'))]
    studies += [(p, noise_study.markdown(pd.read_csv(p))) for p in sorted((ROOT/'docs').glob('noise_*.csv'))]
    studies += [(p, tta_study.markdown(pd.read_csv(p))) for p in sorted((ROOT/'docs').glob('tta_*.csv'))]
    studies += [(p, resume_budget.markdown(pd.read_csv(p))) for p in sorted((ROOT/'docs').glob('resume_*.csv'))]
    studies += [(p, budget_adherence.adherence_markdown(pd.read_csv(p))) for p in sorted((ROOT/'docs').glob('budget_adherence*.csv'))]
    studies += [(p, probe_tta.markdown(pd.read_csv(p))) for p in sorted((ROOT/'docs').glob('probe_*.csv'))]
    studies += [(d, ensemble_study.markdown(*(pd.read_csv(d/f) for f in ensemble_study.TABLES)))
                for d in sorted((ROOT/'docs').glob('ensemble_*')) if d.is_dir()]
    studies.append((ROOT/'docs'/'study_30m_bf16*.csv', lever_ledger.markdown(lever_ledger.ledger((ROOT/'docs').glob('study_30m_bf16*.csv')))))
    return studies


def test_every_study_table_in_the_results_is_what_its_csv_generates():
    results, studies = (ROOT/'docs'/'results.md').read_text(), _study_tables()
    stale = [p.name for p, table in studies if table.strip() not in results]
    assert len(studies) >= 22 and not stale, f"docs/results.md tables differ from their CSV: {stale}"
