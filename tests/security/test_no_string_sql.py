"""No SQL assembled from strings: every statement is a SQLAlchemy construct (values bound as
parameters) or a constant. This scans the shipped source (`metering`, `pricing`, `reports`,
`api`, `migrations`) for `text(...)`, `literal_column(...)`, `exec_driver_sql(...)`,
`execute(...)`, `executemany(...)` and `executescript(...)` whose statement is an f-string, a
`%` or `.format` of a string, or a `+` with a string, directly or through a variable of the same
function (assignment or `for` loop). psycopg's `sql.SQL(...).format(sql.Identifier(...))` is
the safe way to compose identifiers and passes. ruff's S608 checks the same pattern in CI.

The few vetted statements built from this codebase's own constants are allow-listed below, each
with its reason; a new one fails the test until it is rewritten as a construct or vetted.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("metering", "pricing", "reports", "api", "migrations")
SQL_CALLS = {"text", "literal_column", "exec_driver_sql", "execute", "executemany", "executescript"}

# (file, function): why the strings it assembles are safe.
VETTED = {
    ("migrations/versions/0003_pricing_invoices.py", "_sqlite_triggers"):
        "trigger DDL from the module's constant column lists; no value from outside the file",
    ("migrations/versions/0003_pricing_invoices.py", "_postgres_triggers"):
        "trigger DDL from the module's constant column lists; no value from outside the file",
    ("metering/core/db/reads.py", "inserted_by_this_transaction"):
        "a system column of a Table object's own name (metadata, never input)",
    ("metering/core/db/reads.py", "begin_snapshot"):
        "SET LOCAL of a memory size that _memory_setting checks against a strict pattern first",
    ("metering/rollup/stores/postgresql.py", "_alone"):
        "LOCK TABLE of the rollup tables' names from the module's Table constants",
    ("metering/rollup/stores/postgresql.py", "refresh_statistics"):
        "ANALYZE of the rollup tables' names from the module's Table constants",
    ("metering/rollup/stores/sqlite.py", "_staged"):
        "ATTACH/DETACH of a schema name the store makes from a table name (the file path is bound)",
    ("metering/rollup/stores/sqlite.py", "refresh_statistics"):
        "ANALYZE of the rollup tables' names from the module's Table constants",
}  # fmt: skip


def _name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    return None


def _is_text(node: ast.expr) -> bool:
    return (isinstance(node, ast.Constant) and isinstance(node.value, str)) or isinstance(node, ast.JoinedStr)


def assembled(node: ast.expr) -> bool:
    """Whether an expression builds a string at run time from pieces."""
    if isinstance(node, ast.JoinedStr):
        return any(isinstance(part, ast.FormattedValue) for part in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
        return _is_text(node.left)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return any(_is_text(side) or assembled(side) for side in (node.left, node.right))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("format", "join"):
        return _is_text(node.func.value)
    return False


def _bindings(scope: ast.AST) -> dict[str, list[ast.expr]]:
    """What each name of a function (or module) is bound to: assignments and `for` loops."""
    bound: dict[str, list[ast.expr]] = {}
    for node in ast.walk(scope):
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    bound.setdefault(target.id, []).append(node.value)
        if isinstance(node, ast.For) and isinstance(node.target, ast.Name):
            values = node.iter.elts if isinstance(node.iter, ast.Tuple | ast.List) else [node.iter]
            bound.setdefault(node.target.id, []).extend(values)
    return bound


def findings(path: Path) -> Iterator[tuple[str, int, str]]:
    """(function, line, statement) of each SQL call whose statement is assembled from strings."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    scopes: list[tuple[str, ast.AST]] = [("<module>", tree)]
    scopes += [(n.name, n) for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    seen: set[int] = set()
    for function, scope in reversed(scopes):  # innermost first: a call belongs to its own function
        bound = _bindings(scope)
        for node in ast.walk(scope):
            if not (isinstance(node, ast.Call) and _name(node.func) in SQL_CALLS and node.args) or id(node) in seen:
                continue
            seen.add(id(node))
            statement = node.args[0]
            values = bound.get(statement.id, []) if isinstance(statement, ast.Name) else [statement]
            if any(assembled(value) for value in values):
                yield function, node.lineno, ast.unparse(statement)[:100]


def scan() -> list[str]:
    problems = []
    for package in SCANNED:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            for function, line, statement in findings(path):
                if (relative, function) not in VETTED:
                    problems.append(f"{relative}:{line} in {function}(): SQL assembled from strings: {statement}")
    return problems


def test_no_sql_is_assembled_from_strings() -> None:
    problems = scan()
    assert problems == [], (
        "Build statements with SQLAlchemy (select/insert/update, bound parameters) or psycopg.sql "
        "(Identifier); if a constant statement really must be assembled, add its file and function "
        "to VETTED with the reason:\n" + "\n".join(problems)
    )


def test_every_vetted_entry_still_exists() -> None:
    """An allow-list entry whose code is gone must go too (it would silently cover new code)."""
    for file, function in VETTED:
        assert any(f == function for f, _, _ in findings(ROOT / file)), (file, function)


class TestTheCheckItself:
    def flagged(self, source: str, tmp_path: Path) -> list[int]:
        path = tmp_path / "probe.py"
        path.write_text(source, encoding="utf-8")
        return sorted(line for _, line, _ in findings(path))

    def test_it_catches_each_way_of_assembling(self, tmp_path: Path) -> None:
        source = (
            "def f(session, name, table):\n"
            "    session.execute(text(f\"SELECT * FROM t WHERE name = '{name}'\"))\n"  # 2
            "    session.execute(text('SELECT * FROM t WHERE name = %s' % name))\n"  # 3
            "    session.execute(text('SELECT * FROM {}'.format(table)))\n"  # 4
            "    session.execute(text('SELECT * FROM ' + table))\n"  # 5
            "    query = f'DELETE FROM {table}'\n"
            "    session.exec_driver_sql(query)\n"  # 7
            "    for statement in (f'DROP TABLE {table}',):\n"
            "        session.execute(statement)\n"  # 9
        )
        assert self.flagged(source, tmp_path) == [2, 3, 4, 5, 7, 9]

    def test_constructs_constants_and_identifiers_pass(self, tmp_path: Path) -> None:
        source = (
            "def f(session, name, table):\n"
            "    session.execute(select(t).where(t.c.name == name))\n"
            "    session.execute(text('SELECT 1'))\n"
            "    session.execute(text('SELECT * FROM t WHERE name = :name'), {'name': name})\n"
            "    copy = sql.SQL('COPY {} FROM STDIN').format(sql.Identifier(table))\n"
            "    cursor.execute(copy)\n"
        )
        assert self.flagged(source, tmp_path) == []
