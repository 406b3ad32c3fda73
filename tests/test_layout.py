"""The package's layers as docs/design.md draws them: no import cycle at module level, data/ below the rest, and the
reading commands' modules free of torch, fastai and scikit-learn at import."""
import ast, subprocess, sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1]/'thera_fastai'


def _module(path):
    return '.'.join(('thera_fastai', *path.relative_to(PKG).with_suffix('').parts)).removesuffix('.__init__')


def _resolve(module, level, name, is_package):
    base = module.split('.') if is_package else module.split('.')[:-1]
    base = base[:len(base) - level + 1] if level > 1 else base
    return '.'.join([*base, name] if name else base)


def _imports(top_level_only=True):
    "{module: the package modules it imports} (at module level only, or anywhere in the file)."
    graph = {}
    for path in PKG.rglob('*.py'):
        mod, tree = _module(path), ast.parse(path.read_text())
        nodes = tree.body if top_level_only else list(ast.walk(tree))
        found = set()
        for node in nodes:
            if isinstance(node, ast.ImportFrom) and node.level:
                target = _resolve(mod, node.level, node.module, path.name == '__init__.py')
                for alias in node.names:  # `from . import api` names a module
                    found.add(f"{target}.{alias.name}" if (PKG.parent/f"{target}.{alias.name}".replace('.', '/')).with_suffix('.py').exists() else target)
        graph[mod] = found
    return graph


def test_no_module_imports_itself_back_through_a_cycle():
    graph, state, cycle = _imports(), {}, []
    def visit(m, stack):
        if state.get(m) == 'done': return
        if state.get(m) == 'open': cycle.append(stack[stack.index(m):] + [m]); return
        state[m] = 'open'
        for n in graph.get(m, ()): visit(n, stack + [m])
        state[m] = 'done'
    for m in graph: visit(m, [])
    assert not cycle, cycle


def test_data_is_below_the_other_layers():
    for mod, targets in _imports(top_level_only=False).items():
        if not mod.startswith('thera_fastai.data.'): continue
        up = [t for t in targets if t.startswith(('thera_fastai.train', 'thera_fastai.analysis', 'thera_fastai.infer', 'thera_fastai.api', 'thera_fastai.cli'))]
        assert set(up) <= {'thera_fastai.infer.onnx_predict'}, (mod, up)


def test_the_reading_commands_modules_import_no_torch_fastai_or_scikit_learn():
    mods = ['config', 'runs', 'metrics', 'analysis.report', 'analysis.comparison', 'analysis.agreement', 'analysis.paired', 'cli']
    code = ("import sys\n" + ''.join(f"import thera_fastai.{m}\n" for m in mods) +
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'fastai', 'timm', 'sklearn', 'scipy'}))")
    res = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == '[]', res.stdout + res.stderr
