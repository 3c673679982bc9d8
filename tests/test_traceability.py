"""`docs/traceability.md` stays honest: every requirement has a row, and every test id it lists
exists (found by parsing the test files with `ast`: module-level `def test_*` / `async def
test_*`, and `test_*` methods of `Test*` classes; a parametrised id is matched by its base name).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
TABLE = ROOT / "docs" / "traceability.md"
REQUIREMENTS = [
    f"OC-ADAPT-OAI-{n}" for n in (6000, 6001, 6002, 6003, 6010, 6011, 6020, 6021, 6030, 6031)
]

_ROW = re.compile(r"^\|\s*(OC-ADAPT-OAI-\d{4})\s*\|(.*)\|\s*$")
_NODE = re.compile(r"`(tests/[\w/]+\.py)::([\w]+(?:::[\w]+)?)(?:\[[^\]`]*\])?`")


def parse_table(text: str) -> dict[str, tuple[list[str], str]]:
    """requirement → (node ids listed, the raw tests cell)."""
    rows: dict[str, tuple[list[str], str]] = {}
    for line in text.splitlines():
        if m := _ROW.match(line):
            cells = m.group(2).split("|")
            tests_cell = cells[-1]
            ids = [f"{f}::{n}" for f, n in _NODE.findall(tests_cell)]
            rows[m.group(1)] = (ids, tests_cell.strip())
    return rows


def defined_tests(path: Path) -> set[str]:
    """The test names a file defines: `name` for functions, `Class::name` for methods."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith(
            "test"
        ):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            for item in node.body:
                if isinstance(
                    item, ast.FunctionDef | ast.AsyncFunctionDef
                ) and item.name.startswith("test"):
                    names.add(f"{node.name}::{item.name}")
    return names


def missing_ids(ids: list[str], root: Path) -> list[str]:
    missing = []
    for node_id in ids:
        file, name = node_id.split("::", 1)
        path = root / file
        if not path.is_file() or name not in defined_tests(path):
            missing.append(node_id)
    return missing


def test_every_requirement_has_a_row() -> None:
    rows = parse_table(TABLE.read_text())
    assert sorted(rows) == REQUIREMENTS


@pytest.mark.parametrize("requirement", REQUIREMENTS)
def test_every_listed_test_exists(requirement: str) -> None:
    ids, cell = parse_table(TABLE.read_text())[requirement]
    if not ids:
        assert cell.startswith("pending:"), f"{requirement} lists no test and says no reason"
    assert missing_ids(ids, ROOT) == []


def test_the_checker_reports_a_test_id_that_does_not_exist(tmp_path: Path) -> None:
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text(
        "import pytest\n\n@pytest.mark.parametrize('a', [1])\nasync def test_real(a): ...\n\n"
        "class TestGroup:\n    def test_method(self): ...\n"
    )
    table = (
        "| OC-ADAPT-OAI-6000 | x | `tests/test_x.py::test_real[1]`<br>"
        "`tests/test_x.py::TestGroup::test_method`<br>`tests/test_x.py::test_gone` |\n"
    )
    ids, _ = parse_table(table)["OC-ADAPT-OAI-6000"]
    assert ids == [
        "tests/test_x.py::test_real",
        "tests/test_x.py::TestGroup::test_method",
        "tests/test_x.py::test_gone",
    ]
    assert missing_ids(ids, tmp_path) == ["tests/test_x.py::test_gone"]
