"""The hash locks (locks/*.txt, `make lock`) against pyproject.toml, the SBOMs against the
locks, and the installed environment against its lock: a dependency added, removed or
re-ranged in pyproject.toml without `make lock` fails here, and so does a venv that was not
installed from the lock."""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# Each lock and the extras it was resolved for; the *-test locks are what `make install` uses.
LOCKS = {"cpu-test": ("cpu", "test"), "cpu": ("cpu",), "gpu-test": ("gpu", "test"), "gpu": ("gpu",)}
# Left out of the CPU locks on purpose (Makefile, CPU_OMIT): PyPI's builds break the CPU torch.
OMITTED = {"cpu": {"torchvision", "torchaudio", "torchcodec"}}
# The locks are for CPython 3.11 on Linux x86_64 (the Makefile's LOCK_TARGET).
TARGET = {**default_environment(), "python_version": "3.11", "python_full_version": "3.11.7",
          "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
          "os_name": "posix", "implementation_name": "cpython", "platform_python_implementation": "CPython"}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


@dataclass
class Pin:
    version: str
    hashes: list[str] = field(default_factory=list)
    via: list[str] = field(default_factory=list)


def read_lock(path: Path) -> dict[str, Pin]:
    """A uv/pip-tools lock: each pin with its hashes and the `# via` lines under it."""
    pins: dict[str, Pin] = {}
    current = None
    for line in path.read_text().splitlines():
        if match := PIN.match(line):
            current = pins.setdefault(canonicalize_name(match.group(1)), Pin(match.group(2)))
        elif current is not None and (hashes := re.findall(r"--hash=(sha256:[0-9a-f]{64})", line)):
            current.hashes.extend(hashes)
        elif current is not None and (via := re.match(r"^\s+#\s+(?:via\s+)?(\S.*)$", line)):
            if via.group(1) != "via":
                current.via.append(via.group(1).strip())
    return pins


def requirements(extras: tuple[str, ...]) -> list[Requirement]:
    """pyproject.toml's requirements for ``extras`` that apply on the lock's target."""
    listed = [*PYPROJECT["project"]["dependencies"],
              *(r for extra in extras for r in PYPROJECT["project"]["optional-dependencies"][extra])]
    wanted = []
    for text in listed:
        requirement = Requirement(text)
        if requirement.marker is None or any(requirement.marker.evaluate({**TARGET, "extra": e})
                                             for e in ("", *extras)):
            wanted.append(requirement)
    return wanted


def lock(name: str) -> dict[str, Pin]:
    return read_lock(ROOT / "locks" / f"{name}.txt")


@pytest.mark.parametrize("name", LOCKS)
def test_every_requirement_of_pyproject_is_pinned_within_its_range(name):
    pins = lock(name)
    for requirement in requirements(LOCKS[name]):
        key = canonicalize_name(requirement.name)
        assert key in pins, f"locks/{name}.txt lacks {requirement} (pyproject.toml): run `make lock`"
        assert requirement.specifier.contains(pins[key].version, prereleases=True), (
            f"locks/{name}.txt pins {key}=={pins[key].version}, outside {requirement} "
            "(pyproject.toml): run `make lock`")


@pytest.mark.parametrize("name", LOCKS)
def test_the_build_backend_is_pinned_for_installing_fabriek_itself(name):
    pins = lock(name)
    for text in PYPROJECT["build-system"]["requires"]:
        requirement = Requirement(text)
        key = canonicalize_name(requirement.name)
        assert key in pins and requirement.specifier.contains(pins[key].version), (
            f"locks/{name}.txt does not pin {requirement} (build-system.requires): run `make lock`")


@pytest.mark.parametrize("name", [*LOCKS, "tools"])
def test_every_pin_has_hashes_and_a_reason_to_be_there(name):
    pins = lock(name)
    assert len(pins) > 20
    direct = {canonicalize_name(r.name) for r in requirements(LOCKS.get(name, ()))}
    for key, pin in pins.items():
        assert pin.hashes, f"locks/{name}.txt: {key} has no hash"
        assert pin.via, f"locks/{name}.txt: {key} says nothing about why it is there"
        for reason in pin.via:
            if reason.startswith("fabriek (pyproject.toml)"):
                # A requirement removed from pyproject.toml but still locked.
                assert key in direct, f"locks/{name}.txt: {key} is no longer in pyproject.toml: run `make lock`"
            elif not reason.startswith(("-r ", "-c ")):
                parent = canonicalize_name(reason.split()[0])
                assert parent in pins or parent in OMITTED.get(name.split("-")[0], ()), (
                    f"locks/{name}.txt: {key} is there for {reason}, which is not locked: run `make lock`")


def test_the_tools_lock_has_every_tool():
    pins = lock("tools")
    for line in (ROOT / "locks" / "tools.in").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            requirement = Requirement(line)
            assert requirement.specifier.contains(pins[canonicalize_name(requirement.name)].version)


@pytest.mark.parametrize("build", ["cpu", "gpu"])
def test_the_runtime_lock_has_the_tested_versions(build):
    tested, runtime = lock(f"{build}-test"), lock(build)
    assert set(runtime) <= set(tested)
    assert {k: p.version for k, p in runtime.items()} == {k: tested[k].version for k in runtime}
    for omitted in OMITTED.get(build, ()):
        assert omitted not in tested and omitted not in runtime


@pytest.mark.parametrize("build", ["cpu", "gpu"])
def test_the_published_sbom_lists_exactly_the_locked_releases_with_licenses(build):
    sbom = json.loads((ROOT / "deploy" / "sbom" / f"fabriek-{build}.cdx.json").read_text())
    assert sbom["bomFormat"] == "CycloneDX"
    components = {canonicalize_name(c["name"]): c for c in sbom["components"]}
    expected = {k: p.version for k, p in lock(build).items()}
    assert {k: c["version"] for k, c in components.items()} == expected, (
        f"deploy/sbom/fabriek-{build}.cdx.json differs from locks/{build}.txt: run `make sbom`")
    assert sbom["metadata"]["component"]["name"] == "fabriek"
    unlicensed = sorted(k for k, c in components.items() if not c.get("licenses"))
    # A few releases declare no license in their metadata at all; the SBOM says so by
    # leaving them out, and they must stay few enough to check by hand.
    assert len(unlicensed) <= len(components) // 10, unlicensed


def test_this_environment_was_installed_from_its_lock():
    engine = "gpu" if _installed("vllm") else "cpu"
    pins = lock(f"{engine}-test")
    different = {key: (pin.version, _installed(key)) for key, pin in pins.items()
                 if _installed(key) != pin.version}
    assert not different, f"installed releases differ from locks/{engine}-test.txt (`make install`): {different}"
    for omitted in OMITTED.get(engine, ()):
        assert _installed(omitted) is None, f"{omitted} is installed beside the CPU torch"


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
