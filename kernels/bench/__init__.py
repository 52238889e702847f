"""Benchmarks and the GPU device check for the attention kernels (see kernels/README.md)."""
