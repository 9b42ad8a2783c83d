"""The shape of ``src/catga`` (issue 10): no import cycle between its modules, no long module without a
written reason, one definition of the pieces every transport shares.

These read the source (``ast``), never import it: a cycle that only some import order triggers is
found all the same.
"""

from __future__ import annotations

import ast
import pathlib
from collections.abc import Iterator

import pytest

SRC = pathlib.Path(__file__).resolve().parents[1] / "src" / "catga"

#: A module longer than this says why at its top (a ``# Over 500 lines: ...`` comment).
MAX_LINES = 500
#: Long modules another change of issue 10 is splitting (remove a name once it is short or says why).
_SPLIT_ELSEWHERE: frozenset[str] = frozenset()


def _modules() -> dict[str, tuple[pathlib.Path, bool]]:
    """``{dotted name: (path, is a package)}`` of every module under ``src/catga``."""
    modules: dict[str, tuple[pathlib.Path, bool]] = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        package = parts[-1] == "__init__"
        if package:
            parts.pop()
        modules[".".join(parts)] = (path, package)
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_level_imports(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """The imports that run when the module is imported: not in functions or classes, not under
    ``if TYPE_CHECKING:`` (its ``else`` branch runs, so it counts)."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _module_level_imports(node.body)
            yield from _module_level_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, *(h.body for h in node.handlers), node.orelse, node.finalbody):
                yield from _module_level_imports(block)
        elif isinstance(node, ast.With):
            yield from _module_level_imports(node.body)


def import_graph() -> dict[str, set[str]]:
    """Module-level imports between catga's modules: ``{module: {modules it imports}}``.

    ``from catga.x import y`` is an edge to ``catga.x``, and to ``catga.x.y`` when that is a module; a
    package's ``__init__`` re-exports are its edges like any other module's. Parent packages a dotted
    import initialises on the way are not edges (every module would then import ``catga``).
    """
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, (path, package) in modules.items():
        edges: set[str] = set()
        here = name if package else name.rpartition(".")[0]
        for node in _module_level_imports(ast.parse(path.read_text()).body):
            if isinstance(node, ast.Import):
                edges.update(a.name for a in node.names if a.name in modules)
                continue
            if node.level:
                base = here.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target in modules:
                edges.add(target)
            edges.update(f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules)
        edges.discard(name)
        graph[name] = edges
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of ``graph`` (iterative: no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def test_no_import_cycle_in_catga() -> None:
    cycles = [c for c in strongly_connected(import_graph()) if len(c) > 1]
    assert not cycles, f"module-level import cycles in src/catga: {cycles}"


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert sorted(c for c in strongly_connected(graph) if len(c) > 1) == [["a", "b", "c"]]
    assert [c for c in strongly_connected({"a": {"b"}, "b": set()}) if len(c) > 1] == []


def test_the_import_graph_sees_package_re_exports_and_skips_type_checking() -> None:
    graph = import_graph()
    assert "catga.messages" in graph["catga._transport"]
    assert "catga.nats.transport" in graph["catga.nats"]  # an __init__ re-export is an edge
    assert "catga.pipeline.base" in graph["catga.pipeline"]  # a relative or absolute package import
    assert "catga.mediator" not in graph["catga.context"]  # imported under TYPE_CHECKING only


@pytest.mark.parametrize(
    "consumer",
    [
        "memory/_subscription.py",
        "redis/_consumer.py",
        "redis/_reader.py",
        "redis/_reqrep.py",
        "nats/_consumer.py",
        "nats/_reqrep.py",
    ],
)
def test_a_consumer_module_does_not_import_its_transport(consumer: str) -> None:
    """Subscriptions get a policy and a settings value, RPC endpoints a small host protocol or plain
    values: they never import their transport, not even under TYPE_CHECKING (issue 10)."""
    transport = "catga." + consumer.partition("/")[0] + ".transport"
    tree = ast.parse((SRC / consumer).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert transport not in imported
    if consumer == "redis/_reader.py":
        assert "catga.redis._consumer" not in imported  # the consumer builds on the reader, not back


def _long_modules() -> Iterator[tuple[str, int, str]]:
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text()
        lines = text.count("\n")
        if lines > MAX_LINES:
            yield str(path.relative_to(SRC)), lines, text[:400]


def test_a_long_module_says_why_at_its_top() -> None:
    unexplained = [
        f"{name} ({lines} lines)"
        for name, lines, head in _long_modules()
        if name not in _SPLIT_ELSEWHERE and not head.startswith("# Over 500 lines")
    ]
    assert not unexplained, (
        f"modules over {MAX_LINES} lines without a reason at the top: {unexplained}; split them by "
        "concept, or start the module with '# Over 500 lines: <why one concept needs it>'"
    )


def _definitions(name: str) -> list[str]:
    """Modules that bind ``name`` at module level by assignment or ``class``/``def`` (not by import)."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            targets: list[ast.expr] = []
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, ast.AnnAssign):
                targets = [node.target]
            elif isinstance(node, ast.ClassDef | ast.FunctionDef) and node.name == name:
                found.append(str(path.relative_to(SRC)))
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                found.append(str(path.relative_to(SRC)))
    return found


@pytest.mark.parametrize(
    ("name", "home"),
    [("H_ERROR", "messages.py"), ("RawHandler", "protocols.py"), ("MessageHandler", "protocols.py")],
)
def test_a_shared_transport_piece_is_defined_once(name: str, home: str) -> None:
    assert _definitions(name) == [home]


def test_no_transport_writes_its_own_closed_check() -> None:
    """The closed error is built by ``TransportBase._closed_error`` only (issue 10: one closed check)."""
    offenders = [
        str(path.relative_to(SRC))
        for path in sorted(SRC.glob("*/transport.py"))
        if "is closed; create a new one" in path.read_text()
    ]
    assert offenders == []
