"""`docs/traceability.md` stays honest, both ways.

Every requirement has a row; every test a row lists exists and carries the marker
`@pytest.mark.req("<requirement>", …)` naming that row; and every test so marked is listed in
the row of each id it names. Tests are found by parsing the files under `tests/` with `ast`
(module-level `def test_*` / `async def test_*`, and `test_*` methods of `Test*` classes; a
marker on a class applies to its methods); a parametrised id is matched by its base name.
Nothing is imported or run, so the check is fast and a broken test file cannot hide a row.

When it fails, each line of the message says what to add and where, for example
``add `@pytest.mark.req("OC-ADAPT-OAI-6001")` above `def test_x` (tests/test_y.py:12)`` or
``append `<br>`tests/test_y.py::test_x`` to the OC-ADAPT-OAI-6001 row``.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
TABLE = "docs/traceability.md"
REQUIREMENTS = [
    f"OC-ADAPT-OAI-{n}" for n in (6000, 6001, 6002, 6003, 6010, 6011, 6020, 6021, 6030, 6031)
]

_ROW = re.compile(r"^\|\s*(OC-ADAPT-OAI-\d{4})\s*\|(.*)\|\s*$")
#: A row of the "HOST.md → tests" section: one statement of HOST.md, no markers.
_HOST_ROW = re.compile(r"^\|\s*(HOST-\d+)\s*\|(.*)\|\s*$")
_NODE = re.compile(r"`(tests/[\w/]+\.py)::([\w]+(?:::[\w]+)?)(?:\[[^\]`]*\])?`")


def parse_table(text: str, row: re.Pattern[str] = _ROW) -> dict[str, tuple[list[str], str]]:
    """requirement (or HOST.md statement, with `_HOST_ROW`) → (node ids listed, the raw tests
    cell)."""
    rows: dict[str, tuple[list[str], str]] = {}
    for line in text.splitlines():
        if m := row.match(line):
            cells = m.group(2).split("|")
            tests_cell = cells[-1]
            ids = [f"{f}::{n}" for f, n in _NODE.findall(tests_cell)]
            rows[m.group(1)] = (ids, tests_cell.strip())
    return rows


@dataclass
class Found:
    """A test function found by `ast`: where it is and the requirement ids it is marked with."""

    line: int
    name: str  # the bare function name, for "above `def name`"
    marked: list[str] = field(default_factory=list)


@dataclass
class Scanned:
    tests: dict[str, Found]  # `name` or `Class::name` → the test
    problems: list[str]  # req markers the checker cannot read


def _req_ids(decorator: ast.expr) -> list[str] | None:
    """The ids of a `@pytest.mark.req(...)` decorator; None for any other decorator."""
    if not (isinstance(decorator, ast.Call) and _is_req(decorator.func)):
        return None
    return [a.value for a in decorator.args if isinstance(a, ast.Constant)]


def _is_req(node: ast.expr) -> bool:
    """`<anything>.mark.req`: `pytest.mark.req` as written in the tests."""
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "req"
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "mark"
    )


def read_tests(path: Path, rel: str) -> Scanned:
    """The tests a file defines and the requirement ids each is marked with."""
    tree = ast.parse(path.read_text(), filename=str(path))
    tests: dict[str, Found] = {}
    readable: set[int] = set()  # id() of the req markers found where the checker reads them

    def marks(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> list[str]:
        ids: list[str] = []
        for decorator in node.decorator_list:
            found = _req_ids(decorator)
            if found is not None and len(found) == len(decorator.args) == len(set(found)):
                assert isinstance(decorator, ast.Call)
                if found and all(isinstance(i, str) for i in found) and not decorator.keywords:
                    readable.add(id(decorator.func))
                    ids += found
        return ids

    def is_test(node: ast.stmt) -> bool:
        return isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith(
            "test"
        )

    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and is_test(node):
            tests[node.name] = Found(node.lineno, node.name, marks(node))
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            on_class = marks(node)
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and is_test(item):
                    test = Found(item.lineno, item.name, [*on_class, *marks(item)])
                    tests[f"{node.name}::{item.name}"] = test
    problems = [
        f"{rel}:{node.lineno}: a req marker the checker cannot read; write it as a decorator of"
        f' the test function or its Test class, `@pytest.mark.req("OC-ADAPT-OAI-6001", …)`'
        f" with one or more distinct string literals"
        for node in ast.walk(tree)
        if _is_req(node) and id(node) not in readable
    ]
    return Scanned(tests, problems)


def _marker(ids: Iterable[str]) -> str:
    return "@pytest.mark.req(" + ", ".join(f'"{i}"' for i in sorted(set(ids))) + ")"


def check(table_text: str, root: Path) -> list[str]:
    """Every way the table and the markers disagree, each saying what to add and where."""
    rows = parse_table(table_text)
    files = {
        path.relative_to(root).as_posix(): read_tests(path, path.relative_to(root).as_posix())
        for path in sorted((root / "tests").rglob("test_*.py"))
    }
    problems = [p for f in files.values() for p in f.problems]
    listed: dict[str, set[str]] = {}  # node id → the rows that list it
    for requirement, (ids, cell) in rows.items():
        if not ids and not cell.startswith("pending:"):
            problems.append(f'{TABLE}: the {requirement} row lists no test and says no "pending:"')
        for node_id in ids:
            listed.setdefault(node_id, set()).add(requirement)
    for node_id, requirements in sorted(listed.items()):
        file, name = node_id.split("::", 1)
        test = files[file].tests.get(name) if file in files else None
        if test is None:
            where = ", ".join(sorted(requirements))
            problems.append(
                f"{TABLE} lists `{node_id}` under {where}, but {file} defines no such test:"
                f" correct the id or remove it from the row"
            )
            continue
        if missing := requirements - set(test.marked):
            change = "change its marker to" if test.marked else "add"
            problems.append(
                f"{node_id} is listed under {', '.join(sorted(missing))} but not marked so:"
                f" {change} `{_marker([*test.marked, *missing])}` above"
                f" `def {test.name}` ({file}:{test.line})"
            )
    for file, found in files.items():
        for name, test in found.tests.items():
            node_id = f"{file}::{name}"
            for requirement in sorted(set(test.marked)):
                if requirement not in rows:
                    problems.append(
                        f"{node_id} ({file}:{test.line}) is marked {requirement}, which has no row"
                        f" in {TABLE}: use one of {', '.join(sorted(rows))}"
                    )
                elif requirement not in listed.get(node_id, set()):
                    problems.append(
                        f"{node_id} ({file}:{test.line}) is marked {requirement} but not listed:"
                        f" append <br>`{node_id}` to the {requirement} row of {TABLE}"
                    )
    return problems


def host_problems(table_text: str, root: Path) -> list[str]:
    """The HOST.md rows: numbered HOST-1… once each, each listing tests that exist."""
    rows = parse_table(table_text, _HOST_ROW)
    lines = [line for line in table_text.splitlines() if _HOST_ROW.match(line)]
    problems = []
    if list(rows) != [f"HOST-{i}" for i in range(1, len(lines) + 1)]:
        problems.append(f"{TABLE}: the HOST rows are not numbered HOST-1… in order, once each")
    for statement, (ids, cell) in rows.items():
        if not ids and not cell.startswith("pending:"):
            problems.append(f'{TABLE}: the {statement} row lists no test and says no "pending:"')
        for node_id in ids:
            file, name = node_id.split("::", 1)
            path = root / file
            if not path.is_file() or name not in read_tests(path, file).tests:
                problems.append(f"{TABLE} lists `{node_id}` under {statement}: no such test")
    return problems


def test_every_host_statement_lists_tests_that_exist() -> None:
    text = (ROOT / TABLE).read_text()
    assert parse_table(text, _HOST_ROW)
    problems = host_problems(text, ROOT)
    assert not problems, "\n" + "\n".join(problems)


def test_the_host_checker_reports_a_missing_test_an_empty_row_and_a_bad_number(
    tmp_path: Path,
) -> None:
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text("def test_real(): ...\n")
    table = (
        "| HOST-1 | a | `tests/test_x.py::test_real`<br>`tests/test_x.py::test_gone` |\n"
        "| HOST-2 | b | |\n"
        "| HOST-2 | c | pending: later |\n"
    )
    assert host_problems(table, tmp_path) == [
        f"{TABLE}: the HOST rows are not numbered HOST-1… in order, once each",
        f"{TABLE} lists `tests/test_x.py::test_gone` under HOST-1: no such test",
    ]
    assert (
        host_problems(table.replace("| HOST-2 | c | pending: later |\n", ""), tmp_path)[-1]
        == f'{TABLE}: the HOST-2 row lists no test and says no "pending:"'
    )


def test_every_requirement_has_a_row() -> None:
    rows = parse_table((ROOT / TABLE).read_text())
    assert sorted(rows) == REQUIREMENTS


def test_the_table_and_the_req_markers_agree() -> None:
    problems = check((ROOT / TABLE).read_text(), ROOT)
    assert not problems, "\n" + "\n".join(problems)


def test_every_listed_test_exists_and_is_marked_and_every_marked_test_is_listed(
    tmp_path: Path,
) -> None:
    # The checker itself, on a small tree with one of each mistake.
    (tmp_path / "tests" / "sub").mkdir(parents=True)
    (tmp_path / "tests" / "test_x.py").write_text(
        "import pytest\n\n"
        "@pytest.mark.parametrize('a', [1])\n"
        "@pytest.mark.req('OC-ADAPT-OAI-6000')\n"
        "async def test_real(a): ...\n\n"
        "@pytest.mark.req('OC-ADAPT-OAI-6000')\n"
        "class TestGroup:\n"
        "    def test_method(self): ...\n\n"
        "def test_unmarked(): ...\n\n"
        "@pytest.mark.req('OC-ADAPT-OAI-6000')\n"
        "def test_half_marked(): ...\n\n"
        "@pytest.mark.req('OC-ADAPT-OAI-6001')\n"
        "def test_unlisted(): ...\n\n"
        "@pytest.mark.req('OC-ADAPT-OAI-9999')\n"
        "def test_unknown_requirement(): ...\n\n"
        "@pytest.mark.parametrize('a', [pytest.param(1, marks=pytest.mark.req('x'))])\n"
        "def test_marker_out_of_reach(a): ...\n"
    )
    (tmp_path / "tests" / "sub" / "test_y.py").write_text(
        "import pytest\n\n@pytest.mark.req('OC-ADAPT-OAI-6000', 'OC-ADAPT-OAI-6001')\n"
        "def test_deep(): ...\n"
    )
    table = (
        "| OC-ADAPT-OAI-6000 | x | `tests/test_x.py::test_real[1]`<br>"
        "`tests/test_x.py::TestGroup::test_method`<br>`tests/test_x.py::test_gone`<br>"
        "`tests/test_x.py::test_unmarked`<br>`tests/test_x.py::test_half_marked`<br>"
        "`tests/sub/test_y.py::test_deep` |\n"
        "| OC-ADAPT-OAI-6001 | y | `tests/test_x.py::test_half_marked`<br>"
        "`tests/sub/test_y.py::test_deep` |\n"
        "| OC-ADAPT-OAI-6002 | z | |\n"
        "| OC-ADAPT-OAI-6003 | w | pending: nobody wrote it yet |\n"
    )
    assert parse_table(table)["OC-ADAPT-OAI-6000"][0][:3] == [
        "tests/test_x.py::test_real",
        "tests/test_x.py::TestGroup::test_method",
        "tests/test_x.py::test_gone",
    ]
    assert check(table, tmp_path) == [
        "tests/test_x.py:22: a req marker the checker cannot read; write it as a decorator of the"
        ' test function or its Test class, `@pytest.mark.req("OC-ADAPT-OAI-6001", …)` with one'
        " or more distinct string literals",
        f'{TABLE}: the OC-ADAPT-OAI-6002 row lists no test and says no "pending:"',
        f"{TABLE} lists `tests/test_x.py::test_gone` under OC-ADAPT-OAI-6000, but"
        " tests/test_x.py defines no such test: correct the id or remove it from the row",
        "tests/test_x.py::test_half_marked is listed under OC-ADAPT-OAI-6001 but not marked so:"
        ' change its marker to `@pytest.mark.req("OC-ADAPT-OAI-6000", "OC-ADAPT-OAI-6001")`'
        " above `def test_half_marked` (tests/test_x.py:14)",
        "tests/test_x.py::test_unmarked is listed under OC-ADAPT-OAI-6000 but not marked so:"
        ' add `@pytest.mark.req("OC-ADAPT-OAI-6000")` above `def test_unmarked`'
        " (tests/test_x.py:11)",
        "tests/test_x.py::test_unlisted (tests/test_x.py:17) is marked OC-ADAPT-OAI-6001 but"
        f" not listed: append <br>`tests/test_x.py::test_unlisted` to the OC-ADAPT-OAI-6001"
        f" row of {TABLE}",
        "tests/test_x.py::test_unknown_requirement (tests/test_x.py:20) is marked"
        f" OC-ADAPT-OAI-9999, which has no row in {TABLE}: use one of OC-ADAPT-OAI-6000,"
        " OC-ADAPT-OAI-6001, OC-ADAPT-OAI-6002, OC-ADAPT-OAI-6003",
    ]


@pytest.mark.parametrize(
    "marker",
    [
        "@pytest.mark.req",  # no call: no ids
        "@pytest.mark.req()",  # no ids
        "@pytest.mark.req(REQ)",  # not a literal
        "@pytest.mark.req('OC-ADAPT-OAI-6000', 'OC-ADAPT-OAI-6000')",  # twice
        "@pytest.mark.req('OC-ADAPT-OAI-6000', why='x')",  # a keyword
    ],
)
def test_a_req_marker_the_checker_cannot_read_is_reported(tmp_path: Path, marker: str) -> None:
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text(f"import pytest\n\n{marker}\ndef test_a(): ...\n")
    problems = check("| OC-ADAPT-OAI-6000 | x | pending: later |\n", tmp_path)
    assert problems == [
        "tests/test_x.py:3: a req marker the checker cannot read; write it as a decorator of the"
        ' test function or its Test class, `@pytest.mark.req("OC-ADAPT-OAI-6001", …)` with one'
        " or more distinct string literals"
    ]
