"""Imports go one way: serving -> routers/kernels; routers stays pure; nothing imports serving."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Top-level modules each package may not import.
FORBIDDEN = {
    "routers": {"serving", "kernels", "ray", "vllm", "torch", "triton", "fastapi", "starlette",
                "httpx", "grpc", "requests", "aiohttp"},
    "kernels": {"serving", "routers", "ray", "fastapi", "starlette"},
}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_what_it_may(package):
    violations = {str(path.relative_to(ROOT)): sorted(imported_roots(path) & FORBIDDEN[package])
                  for path in (ROOT / package).rglob("*.py")}
    assert not {k: v for k, v in violations.items() if v}


# The plugin is vLLM glue; the benchmark imports vLLM's own kernel (or the copy that
# kernels/bench/vendor_vllm_kernel.py brings to a GPU machine) only to compare against it.
VLLM_IMPORTERS = {"kernels/vllm_backend.py", "kernels/bench/bench_attention.py"}


def test_kernels_imports_vllm_only_in_its_plugin():
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "kernels").rglob("*.py")
                 if "vllm" in imported_roots(p) and str(p.relative_to(ROOT)) not in VLLM_IMPORTERS]
    assert not offenders


# serving's rooms by role, lowest first: each may import only rooms below it (and the
# generated protos); the entry points above them (app builder, launcher, CLI) may import
# any room, and no room imports an entry point.
SERVING_ROOMS = ("config", "records", "engine", "admission", "power", "frontdoor", "local")
SERVING_ENTRY_POINTS = {"app", "launcher", "domain_cluster", "cli"}


def serving_imports(path: Path) -> set[str]:
    """The second components of every ``serving.X...`` this file imports."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[1] for a in node.names if a.name.startswith("serving."))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.startswith("serving."):
                names.add(node.module.split(".")[1])
            elif node.module == "serving":
                names.update(a.name for a in node.names)
    return names


@pytest.mark.parametrize("room", SERVING_ROOMS)
def test_serving_rooms_import_only_downward(room):
    allowed = set(SERVING_ROOMS[:SERVING_ROOMS.index(room) + 1]) | {"protos"}
    violations = {str(p.relative_to(ROOT)): sorted(serving_imports(p) - allowed)
                  for p in (ROOT / "serving" / room).rglob("*.py")}
    assert not {k: v for k, v in violations.items() if v}


def test_serving_has_no_loose_modules_beside_its_rooms():
    loose = {p.stem for p in (ROOT / "serving").glob("*.py")} - SERVING_ENTRY_POINTS - {"__init__"}
    assert not loose, f"put {sorted(loose)} into one of the rooms {SERVING_ROOMS}"
