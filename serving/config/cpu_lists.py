"""CPU lists as vLLM's ``VLLM_CPU_OMP_THREADS_BIND`` and Linux write them."""

from __future__ import annotations


def cores_of(threads_bind: str) -> set[int] | None:
    """The cores a ``VLLM_CPU_OMP_THREADS_BIND`` value names (``0``, ``0-3,8``, ``0-1|2-3``);
    None for ``auto`` or ``nobind``, which name none."""
    if threads_bind in ("auto", "nobind", ""):
        return None
    cores: set[int] = set()
    for rank in threads_bind.split("|"):
        for part in rank.split(","):
            first, _, last = part.partition("-")
            cores.update(range(int(first), int(last or first) + 1))
    return cores
