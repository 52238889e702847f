"""Triton kernels, one per module: the ``@triton.jit`` code and its launcher."""
