"""The layout keeps showing the architecture (docs/architecture.md): no import cycles between
syncd modules (imports inside functions count), modules of one job (~400 lines), one package
per platform under syncd/targets/."""

from __future__ import annotations

import ast
from pathlib import Path

from syncd.targets import REGISTRY
from tests.daemon_harness import REPO

PACKAGE = REPO / "syncd"
MAX_LINES = 420  # "about 400": a module past this is asked to split (design.md, Style)
EXEMPT: set[str] = set()  # (the coordinator was the exception until the engine split it, issue 9)


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The syncd modules ``path`` imports anywhere in its body (functions included)."""
    found = set()
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in modules}
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    return {name: _imports(path, modules) - {name} for name, path in files.items()}


def test_no_import_cycles_between_syncd_modules():
    graph = _graph()
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            # A package importing its own submodules is not a cycle of the code's layers.
            if nxt.startswith(node + "."):
                continue
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_modules_stay_small():
    too_long = {str(p.relative_to(REPO)): n for p in PACKAGE.rglob("*.py")
                if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
                and str(p.relative_to(REPO)) not in EXEMPT}
    assert too_long == {}, f"modules over {MAX_LINES} lines (split them by job): {too_long}"


def test_each_platform_is_a_package_with_the_same_file_names():
    flat = sorted(p.name for p in (PACKAGE / "targets").glob("*.py")
                  if p.stem not in {"__init__", "base", "http", "local"})
    assert flat == [], f"platform modules left flat in syncd/targets/: {flat}"
    for platform, spec in REGISTRY.items():
        module = spec.partition(":")[0]
        if platform == "local":
            continue
        package = PACKAGE / Path(*module.split(".")[1:-1])
        assert (package / "__init__.py").exists(), f"{platform}: {module} is not in a package"
        for role in ("target.py", "client.py", "payload.py"):
            assert (package / role).exists(), f"{platform}: {package.relative_to(REPO)} has no {role}"
