"""The package layout: models and shared modules never import a method package, a method
package never imports another, and each method owns its command-line group."""

import ast
from pathlib import Path

import longseq

ROOT = Path(longseq.__file__).parent
METHODS = ("power", "collapse", "shuffle", "kltrace", "streaming")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _method_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "longseq" and parts[1] in METHODS else None


def test_no_module_imports_a_method_package_other_than_its_own():
    bad = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel == Path("cli.py"):  # the root command line mounts every method's group
            continue
        own = rel.parts[0] if rel.parts[0] in METHODS else None
        for module in _imports(path):
            method = _method_of(module)
            if method and method != own:
                bad.append(f"{rel} imports {module}")
    assert not bad, bad


def test_each_method_owns_its_command_group():
    from longseq.cli import app

    mounted = {g.name: g.typer_instance for g in app.registered_groups}
    assert set(mounted) == set(METHODS)
    for method in METHODS:
        module = __import__(f"longseq.{method}.cli", fromlist=["app"])
        assert mounted[method] is module.app
