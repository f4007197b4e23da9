"""The layout rules of the package, checked by `make lint`.

- at most 12 modules directly in `ergate_celery/`, none over 400 lines anywhere;
- every package's `__init__` has a docstring saying what lives there and what it may import;
- each folder imports only the folders its docstring allows (the table below);
- `model/` and `lifecycle/` import no Celery, kombu, backend client or Django;
- only `contrib/opentelemetry/` imports OpenTelemetry (nothing is paid when it is not used);
- no import cycle between the package's modules at run time: an import inside a function
  counts, only imports under `if TYPE_CHECKING:` are free.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = "ergate_celery"
MAX_TOP_MODULES = 12
MAX_LINES = 400
HEAVY = {"celery", "kombu", "billiard", "redis", "sqlalchemy", "psycopg", "django", "click"}
TOP = {"api", "binding", "exceptions", "job_result", "registry", "settings", "signals"}

# What a folder may import of the package: the folder itself is always allowed.
ALLOWED: dict[str, set[str] | None] = {
    "model": {"exceptions"},
    "lifecycle": {"model", "exceptions"},
    "stores": {"model", "lifecycle", "exceptions", "embedded"},
    "embedded": set(),
    "worker": {
        "model",
        "lifecycle",
        "stores",
        "settings",
        "signals",
        "exceptions",
        "transactions",
    },
    "operations": {
        "model",
        "lifecycle",
        "worker",
        "stores",
        "settings",
        "exceptions",
        "transactions",
    },
    "scheduling": {
        "model",
        "lifecycle",
        "worker",
        "operations",
        "stores",
        "settings",
        "exceptions",
    },
    "testing": None,
    "cli": None,
    "contrib": None,
}
PURE = {"model", "lifecycle"}
#: The one place that may import OpenTelemetry: the rest reaches it through `worker/observing`.
TELEMETRY = "opentelemetry"
TELEMETRY_HOME = f"{PACKAGE}.contrib.opentelemetry"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_type_checking(test: ast.expr) -> bool:
    return "TYPE_CHECKING" in ast.dump(test)


def imports(
    tree: ast.Module, name: str, is_package: bool, modules: dict[str, Path]
) -> list[tuple[str, int]]:
    """Every module this one imports at run time, absolute, with its line."""
    found: list[tuple[str, int]] = []
    package = name if is_package else name.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                found.append((submodule if submodule in modules else target, node.lineno))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def folder_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def check(root: Path) -> list[str]:
    problems: list[str] = []
    package_dir = root / PACKAGE
    modules: dict[str, Path] = {}
    for path in sorted(package_dir.rglob("*.py")):
        if "migrations" in path.parts:
            continue
        modules[module_name(path, root)] = path
    top = [p for p in package_dir.glob("*.py") if p.name != "__init__.py"]
    if len(top) + 1 > MAX_TOP_MODULES:
        problems.append(
            f"{len(top) + 1} modules directly in {PACKAGE}/ (at most {MAX_TOP_MODULES})"
        )
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        text = path.read_text()
        lines = text.count("\n")
        where = path.relative_to(root)
        if lines > MAX_LINES:
            problems.append(f"{where}: {lines} lines (at most {MAX_LINES})")
        tree = ast.parse(text)
        if path.name == "__init__.py" and not ast.get_docstring(tree):
            problems.append(f"{where}: a package without a docstring saying what lives there")
        folder = folder_of(name)
        allowed = ALLOWED.get(folder) if folder not in TOP else None
        edges[name] = set()
        for target, line in imports(tree, name, path.name == "__init__.py", modules):
            top_name = target.split(".")[0]
            if folder in PURE and top_name in HEAVY:
                problems.append(f"{where}:{line}: imports {target} ({folder}/ stays pure)")
            if top_name == TELEMETRY and not name.startswith(TELEMETRY_HOME):
                problems.append(
                    f"{where}:{line}: imports {target}; only {TELEMETRY_HOME} may (hook in "
                    "through worker/observing.py)"
                )
            if top_name != PACKAGE or target == PACKAGE:
                if target == PACKAGE and name != PACKAGE:
                    problems.append(
                        f"{where}:{line}: imports the package itself; import the module"
                    )
                continue
            if target not in modules or target == name:
                continue
            edges[name].add(target)
            other = folder_of(target)
            if allowed is not None and other != folder and other not in allowed:
                problems.append(f"{where}:{line}: {folder}/ may not import {target}")
    for cycle in cycles(edges):
        problems.append("import cycle at run time: " + " -> ".join([*cycle, cycle[0]]))
    return problems


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(edges.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def main() -> int:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent
    problems = check(root)
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} layout problem(s); the rules are in tools/check_layout.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
