"""Dependencies between the package's parts point one way, read from the source with ``ast`` (nothing is imported).

A part is a subpackage (``esc_eval``, ``esc_rank``, ``harness``, ``judges``, ``mllmguard``, ``report``, and the
folders that ``setup.cfg``'s ``package_dir`` installs under the package, e.g. ``metrics/`` as
``esc_guard_tasks.metrics``) or a top-level module (``hub``, ``autoload``, ``cli`` …). An import inside a function
runs only when the function is called ("lazy"); imports under ``if TYPE_CHECKING:`` never run and are not counted.
"""

from __future__ import annotations

import ast
import configparser
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "esc_guard_tasks"
HARNESS = f"{PACKAGE}.harness"
# The benchmark cores: they hold the formulas and the data and are driven by the harness bridges, never the reverse.
CORES = ("esc_eval", "esc_rank", "judges", "mllmguard", "report")


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, by its installed name
    target: str  # the imported module (or module.name: a name may be a submodule)
    lazy: bool
    where: str  # file:line, for the failure message

    @property
    def edge(self) -> tuple[str, str]:
        return part(self.module), part(self.target)


def part(module: str) -> str:
    """``esc_guard_tasks.esc_eval.judging`` -> ``esc_eval``; the package's own ``__init__`` is ``esc_guard_tasks``."""
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else pieces[0]


def source_folders(root: Path) -> dict[str, Path]:
    """Installed package name -> source folder: the package itself and every ``package_dir`` entry of setup.cfg."""
    config = configparser.ConfigParser(interpolation=None)
    config.read(root / "setup.cfg", encoding="utf-8")
    folders = {PACKAGE: root / PACKAGE}
    for line in config.get("options", "package_dir", fallback="").splitlines():
        name, _, folder = (s.strip() for s in line.partition("="))
        if name.startswith(f"{PACKAGE}."):
            folders[name] = root / folder
    return folders


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _targets(node: ast.Import | ast.ImportFrom, package: str) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join([*anchor, *([node.module] if node.module else [])])
    return [base, *(f"{base}.{alias.name}" for alias in node.names)]


def _walk(nodes: Iterable[ast.AST], lazy: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    for node in nodes:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, lazy
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _walk(node.orelse, lazy)
        else:
            inner = lazy or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            yield from _walk(ast.iter_child_nodes(node), inner)


def imports(folders: dict[str, Path]) -> list[Import]:
    """Every import between two different parts, found in the ``.py`` files below ``folders``."""
    found = []
    for name, folder in folders.items():
        for path in sorted(folder.rglob("*.py")):
            relative = path.relative_to(folder).with_suffix("").parts
            is_package = relative[-1] == "__init__"
            module = ".".join([name, *(relative[:-1] if is_package else relative)])
            package = module if is_package else module.rpartition(".")[0]
            tree = ast.parse(path.read_text("utf-8"), filename=str(path))
            for node, lazy in _walk(tree.body, lazy=False):
                for target in _targets(node, package):
                    record = Import(module, target, lazy, f"{path.relative_to(folder.parent)}:{node.lineno}")
                    if target.split(".")[0] == PACKAGE and record.edge[0] != record.edge[1]:
                        found.append(record)
    return found


def cycles(found: Iterable[Import]) -> list[list[Import]]:
    """One closed path of imports (as witnesses) for each part that can reach itself through other parts."""
    first: dict[tuple[str, str], Import] = {}
    for record in found:
        first.setdefault(record.edge, record)
    graph: dict[str, set[str]] = {}
    for a, b in first:
        graph.setdefault(a, set()).add(b)
    result, reported = [], set()
    for start in sorted(graph):
        paths = {start: [start]}
        queue = [start]
        while queue:
            node = queue.pop(0)
            for nxt in sorted(graph.get(node, ())):
                if nxt == start:
                    loop = [*paths[node], start]
                    if frozenset(loop) not in reported:
                        reported.add(frozenset(loop))
                        result.append([first[edge] for edge in zip(loop, loop[1:], strict=False)])
                    queue.clear()
                    break
                if nxt not in paths:
                    paths[nxt] = [*paths[node], nxt]
                    queue.append(nxt)
    return result


def describe(loops: list[list[Import]]) -> str:
    return "\n".join(
        " -> ".join(r.edge[0] for r in loop)
        + f" -> {loop[0].edge[0]}: "
        + "; ".join(f"{r.where} imports {r.target}" for r in loop)
        for loop in loops
    )


ALL = imports(source_folders(ROOT))


def test_the_graph_covers_the_package_and_the_installed_folders() -> None:
    """The scan reads the cores, the harness bridges and ``metrics/`` under its installed name (a scan that found
    nothing would pass every other test here)."""
    parts = {record.edge[0] for record in ALL}
    assert {*CORES, "harness", "metrics"} <= parts, parts


def test_no_import_cycle_between_parts_at_import_time() -> None:
    """Importing any module never re-enters the part it started from: module-level imports form no cycle."""
    loops = cycles(r for r in ALL if not r.lazy)
    assert not loops, describe(loops)


def test_lazy_imports_close_no_cycle_either() -> None:
    """Counting imports inside functions too (they run when the function is called), no part re-enters itself:
    the install-time hook imports the harness's checks, and the harness imports the task-folder helpers from
    ``task_folders``, never from the hook."""
    loops = cycles(ALL)
    assert not loops, describe(loops)


def test_cores_never_import_a_harness_module() -> None:
    """The cores (ESC-Eval, ESC-RANK, judges, MLLMGuard, report) do not reach into a harness bridge, even lazily."""
    wrong = [f"{r.where} imports {r.target}" for r in ALL if r.edge[0] in CORES and r.target.startswith(HARNESS)]
    assert not wrong, wrong


def test_the_checker_sees_eager_lazy_relative_and_type_only_imports(tmp_path: Path) -> None:
    """On a made-up package: a relative module-level import and a lazy one closing a cycle are both found, a cycle
    through a third part is reported once, and an import under TYPE_CHECKING is not counted."""
    src = tmp_path / PACKAGE
    for folder, text in {
        "a": "from ..b import thing\n",
        "b": f"def later():\n    from {PACKAGE}.a import x\n",
        "c": f"from {PACKAGE}.b import y\n",
        "d": f"from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from {PACKAGE}.c import z\n",
    }.items():
        (src / folder).mkdir(parents=True)
        (src / folder / "__init__.py").write_text("")
        (src / folder / "mod.py").write_text(text)
    (src / "b" / "back.py").write_text(f"import {PACKAGE}.c\n")
    found = imports({PACKAGE: src})
    assert {(r.edge, r.lazy) for r in found} == {
        (("a", "b"), False),
        (("b", "a"), True),
        (("c", "b"), False),
        (("b", "c"), False),
    }

    def loops(records: Iterable[Import]) -> set[frozenset[tuple[str, str]]]:
        return {frozenset(r.edge for r in loop) for loop in cycles(records)}

    assert loops(r for r in found if not r.lazy) == {frozenset({("b", "c"), ("c", "b")})}
    assert loops(found) == {frozenset({("a", "b"), ("b", "a")}), frozenset({("b", "c"), ("c", "b")})}
