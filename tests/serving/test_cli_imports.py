"""`fabriek keys` and `fabriek usage` answer without importing an engine (no vLLM, Ray or torch).

Each command runs in a fresh interpreter, as the console script does, with a FABRIEK_HOME of
its own; a small wrapper calls ``main([...])`` and then reports which heavy modules were
imported. Not timed: what makes them slow is the import, and that is what is checked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY_MODULES = ("vllm", "ray", "torch")

# Runs one command and prints, on its last line, its exit code and the heavy modules loaded.
_WRAPPER = """
import contextlib, io, json, sys
from serving.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    code = main(json.loads(sys.argv[1]))
print(out.getvalue(), end="")
print(json.dumps({"code": code, "heavy": sorted(m for m in HEAVY if m in sys.modules)}))
"""


def _run(argv: list[str], home: Path) -> tuple[int, list[str], list[str]]:
    """The exit code, the heavy modules imported and the output lines of ``fabriek ARGV``."""
    env = {**os.environ, "FABRIEK_HOME": str(home), "PYTHONPATH": str(ROOT)}
    env.pop("FABRIEK_USAGE_DATABASE_URL", None)  # the ledger under this home, not the caller's
    result = subprocess.run([sys.executable, "-c", f"HEAVY = {HEAVY_MODULES!r}\n{_WRAPPER}", json.dumps(argv)],
                            capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    *lines, report = result.stdout.splitlines()
    outcome = json.loads(report)
    return outcome["code"], outcome["heavy"], lines


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fabriek-home")


def test_keys_create_list_revoke_import_no_engine(home):
    code, heavy, lines = _run(["keys", "create", "--tenant", "gov-demo"], home)
    assert (code, heavy) == (0, [])
    key_id = lines[-1].split("_")[1]
    code, heavy, lines = _run(["keys", "list"], home)
    assert (code, heavy) == (0, [])
    assert any(line.startswith(key_id) for line in lines)
    code, heavy, lines = _run(["keys", "revoke", key_id], home)
    assert (code, heavy) == (0, [])
    assert lines[-1].startswith(f"revoked key {key_id}")


def test_usage_imports_no_engine(home):
    code, heavy, lines = _run(["usage", "--since", "24h"], home)
    assert (code, heavy) == (0, [])
    assert lines[-1].startswith("(no usage recorded")
