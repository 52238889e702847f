"""fabriek's public protobuf APIs: the ``.proto`` files and the Python stubs generated from them.

The stubs are committed; ``python -m serving.protos.generate`` rebuilds them after a
``.proto`` change, and a test fails while they are stale.
"""
