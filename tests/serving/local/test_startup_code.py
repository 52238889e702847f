"""`.pth` files that run code at every Python start: only what an expected package installed
passes; `fabriek serve` refuses to start beside anything else, `fabriek version` names it."""

from __future__ import annotations

import base64
import hashlib
import os
import site
import subprocess
import sys
from pathlib import Path

import pytest

from serving.config import load_config
from serving.config.schema import PlatformConfig
from serving.launcher import _startup_code_allowed
from serving.local.startup_code import code_pth_files, describe_versions, unexpected_code_pth_files

FABRIEK = Path(sys.executable).parent / "fabriek"
# What litellm 1.82.7's hook looked like in shape: one `import` line that runs a payload.
HOOK = "import os; os.environ.get('HOME') and None\n"


def install(site_dir: Path, distribution: str, files: dict[str, str], record: dict[str, str] | None = None) -> None:
    """A distribution as an installer leaves it: its files, METADATA and a RECORD with hashes
    (``record`` overrides a file's recorded content, as if changed since)."""
    info = site_dir / f"{distribution}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 1.0\n")
    lines = [f"{info.name}/METADATA,,"]
    for name, text in files.items():
        (site_dir / name).write_text(text)
        recorded = (record or {}).get(name, text).encode()
        digest = base64.urlsafe_b64encode(hashlib.sha256(recorded).digest()).rstrip(b"=").decode()
        lines.append(f"{name},sha256={digest},{len(recorded)}")
    (info / "RECORD").write_text("\n".join([*lines, f"{info.name}/RECORD,,"]) + "\n")


def test_only_hooks_that_an_expected_package_installed_unchanged_pass(tmp_path):
    install(tmp_path, "setuptools", {"distutils-precedence.pth": "import os; var = 'x'\n"})
    install(tmp_path, "litellm", {"litellm_init.pth": HOOK})
    install(tmp_path, "fabriek", {"__editable__.fabriek-1.0.pth": "import sys\n"},
            record={"__editable__.fabriek-1.0.pth": "/work/fabriek\n"})
    (tmp_path / "dropped-by-hand.pth").write_text("import\tsocket\n")
    (tmp_path / "paths-only.pth").write_text("/opt/somewhere\n# import nothing\n")

    found = {p.path.name: p for p in code_pth_files([tmp_path])}

    assert set(found) == {"distutils-precedence.pth", "litellm_init.pth", "__editable__.fabriek-1.0.pth",
                          "dropped-by-hand.pth"}
    assert found["distutils-precedence.pth"].expected
    assert (found["litellm_init.pth"].owner, found["litellm_init.pth"].expected) == ("litellm", False)
    assert "installed by litellm" in found["litellm_init.pth"].describe()
    changed = found["__editable__.fabriek-1.0.pth"]
    assert (changed.owner, changed.hash_matches, changed.expected) == ("fabriek", False, False)
    assert "differs from what fabriek installed" in changed.describe()
    assert found["dropped-by-hand.pth"].owner is None
    assert "no installed package owns it" in found["dropped-by-hand.pth"].describe()
    assert {p.path.name for p in unexpected_code_pth_files([tmp_path])} == {
        "litellm_init.pth", "__editable__.fabriek-1.0.pth", "dropped-by-hand.pth"}


def test_the_environment_installed_from_the_lock_runs_no_unexpected_code():
    assert unexpected_code_pth_files() == []
    assert any(p.owner == "setuptools" for p in code_pth_files())


@pytest.fixture
def hook_in_this_python():
    """A `.pth` that runs (harmless) code, dropped into this interpreter's own site-packages
    as a compromised package would."""
    path = Path(site.getsitepackages()[0]) / "zz-fabriek-test-hook.pth"
    path.write_text("import sys\n")
    try:
        yield path
    finally:
        path.unlink()


def _config(mode: str) -> PlatformConfig:
    base = load_config(None)
    return base.model_copy(update={"local": base.local.model_copy(update={"unknown_pth_files": mode})})


def test_serve_refuses_to_start_beside_an_unknown_hook(hook_in_this_python, capsys):
    assert not _startup_code_allowed(_config("refuse"))
    said = capsys.readouterr().out
    assert f"start-up refused: {hook_in_this_python}: runs code at every Python start" in said
    assert "local.unknown_pth_files: warn" in said

    assert _startup_code_allowed(_config("warn"))
    assert f"warning: {hook_in_this_python}" in capsys.readouterr().out


def test_fabriek_serve_stops_before_starting_anything(hook_in_this_python):
    done = subprocess.run([str(FABRIEK), "serve"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert done.returncode == 1
    assert "start-up refused" in done.stdout and str(hook_in_this_python) in done.stdout
    assert "starting one Ray cluster" not in done.stdout


def test_fabriek_version_names_versions_and_hooks(hook_in_this_python):
    done = subprocess.run([str(FABRIEK), "version"], capture_output=True, text=True, timeout=60, check=True)
    first, *hooks = done.stdout.splitlines()
    assert first == describe_versions()
    assert first.startswith("fabriek 0.1.0, vLLM 0.32.0, Ray 2.60.0, torch ")
    assert f"UNEXPECTED: {hook_in_this_python}: runs code at every Python start and no installed package owns it" in hooks
    assert any(h.endswith("(installed by setuptools)") and not h.startswith("UNEXPECTED") for h in hooks)
