"""docs/security.md stays true: its field tables match routers/request_shape.py, and every
test it names as proof exists.

The tables are plain markdown: rows ``| `name` | ... |`` under the headings "Offered
fields", "Refused fields" and "Bounds" of the section "The request fields".
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from routers import request_shape
from routers.request_shape import ALLOWED_FIELDS, REFUSED_FIELDS

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "security.md"
# `tests/some/test_file.py::test_name`, in backticks or not.
TEST_REFERENCE = re.compile(r"(tests/[\w/.-]+\.py)::(test_\w+)")
# "16 (`MAX_STOP_SEQUENCES`)": a bound's value quoted beside its constant, anywhere in the doc.
QUOTED_BOUND = re.compile(r"\b(\d+) \(`((?:MAX|DEFAULT)_[A-Z_]+)`\)")
ORIGINS = {"OpenAI", "vLLM extension", "OpenAI (completions); vLLM extension (chat)",
           "OpenAI (chat); vLLM extension (completions)"}


def doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


def table_rows(heading: str) -> dict[str, list[str]]:
    """The rows of the table under ``### heading``, by the name in their first cell."""
    lines = doc_text().splitlines()
    start = lines.index(f"### {heading}")  # ValueError: the heading is gone
    rows: dict[str, list[str]] = {}
    for line in lines[start + 1:]:
        if line.startswith("#"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        name = re.fullmatch(r"`([\w.]+)`", cells[0]) if line.startswith("|") else None
        if name is not None:
            assert name[1] not in rows, f"{heading}: `{name[1]}` has two rows"
            rows[name[1]] = cells[1:]
    assert rows, f"no table rows under '### {heading}'"
    return rows


def bounds() -> dict[str, int]:
    """The module's bound constants: ``MAX_*`` and ``DEFAULT_*`` integers."""
    return {name: value for name, value in vars(request_shape).items()
            if name.startswith(("MAX_", "DEFAULT_")) and isinstance(value, int)}


def test_offered_fields_table_is_the_allowlist_of_both_methods():
    rows = table_rows("Offered fields")
    assert set(rows) == ALLOWED_FIELDS["chat"] | ALLOWED_FIELDS["completions"]
    for field, (chat, completions, origin, *_) in rows.items():
        assert (chat == "yes") == (field in ALLOWED_FIELDS["chat"]), f"`{field}`: chat column"
        assert (completions == "yes") == (field in ALLOWED_FIELDS["completions"]), f"`{field}`: completions column"
        assert chat in ("yes", "") and completions in ("yes", ""), field
        assert origin in ORIGINS, f"`{field}`: say whether it is OpenAI's or a vLLM extension"


def test_refused_fields_table_has_each_refused_field_with_its_reason():
    rows = table_rows("Refused fields")
    assert set(rows) == set(REFUSED_FIELDS)
    for field, cells in rows.items():
        assert cells[0] == REFUSED_FIELDS[field], f"`{field}`: the reason differs from the code's"
    # A reason applies where the method does not offer the field (`prompt` is completions' own).
    assert all(any(field not in allowed for allowed in ALLOWED_FIELDS.values()) for field in rows)


def test_bounds_table_has_every_bound_with_its_value():
    rows = table_rows("Bounds")
    assert set(rows) == set(bounds())
    for name, value in bounds().items():
        assert int(rows[name][0].replace("_", "").replace(",", "")) == value, name


def test_every_bound_quoted_in_the_text_has_its_current_value():
    quoted = QUOTED_BOUND.findall(doc_text())
    assert quoted, "the offered fields' bounds quote their constants, e.g. 16 (`MAX_STOP_SEQUENCES`)"
    values = bounds()
    for number, name in quoted:
        assert name in values, f"`{name}` is not a constant of routers/request_shape.py"
        assert int(number) == values[name], f"{number} (`{name}`)"


def references() -> list[tuple[str, str]]:
    return sorted(set(TEST_REFERENCE.findall(doc_text())))


def test_the_doc_names_its_proof():
    assert len(references()) >= 40
    assert any(path == "tests/serving/test_e2e_hostile.py" for path, _ in references())


@pytest.mark.parametrize(("path", "name"), references(), ids=[f"{p}::{n}" for p, n in references()])
def test_every_named_test_exists(path, name):
    source = ROOT / path
    assert source.is_file(), f"{path} does not exist"
    assert re.search(rf"^\s*(async\s+)?def {name}\(", source.read_text(encoding="utf-8"), re.MULTILINE), \
        f"{path} has no `def {name}(`"
