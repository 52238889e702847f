"""Regenerate the committed Python stubs from the ``.proto`` files (needs ``grpcio-tools``).

    python -m serving.protos.generate

protoc names modules after the proto path (``fabriek.v1.inference_pb2``); the stubs live in
the ``serving.protos`` package, so the grpc stub's import and the module name the message
classes carry are rewritten to the package path. The latter matters: Ray's gRPC proxy
pickles request messages to the ingress replica, and pickle imports a class by that name.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

PROTO_ROOT = Path(__file__).parent
PACKAGE = "serving.protos"
PROTOS = ("fabriek/v1/inference.proto",)


def generate(out_dir: Path) -> list[Path]:
    """Write the stubs of every proto under ``out_dir`` (mirroring the proto tree).

    Returns:
        The written files, relative to ``out_dir``.

    Raises:
        RuntimeError: protoc reported an error.
    """
    import grpc_tools
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).parent / "_proto"  # google/protobuf/*.proto
    args = ["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={out_dir}",
            f"--pyi_out={out_dir}", f"--grpc_python_out={out_dir}", *PROTOS]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    written = []
    for proto in PROTOS:
        stem = proto.removesuffix(".proto")
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            path = out_dir / f"{stem}{suffix}"
            module = stem.rsplit("/", 1)[0].replace("/", ".")
            text = path.read_text().replace(f"from {module} import", f"from {PACKAGE}.{module} import")
            text = text.replace(f"'{stem.replace('/', '.')}_pb2'", f"'{PACKAGE}.{stem.replace('/', '.')}_pb2'")
            path.write_text(text)
            written.append(path.relative_to(out_dir))
    return written


def stale_stubs() -> list[str]:
    """Committed stubs that differ from what the ``.proto`` files generate now."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        return [str(p) for p in generate(fresh)
                if not (PROTO_ROOT / p).is_file() or (PROTO_ROOT / p).read_text() != (fresh / p).read_text()]


if __name__ == "__main__":
    for path in generate(PROTO_ROOT):
        print(f"wrote {PROTO_ROOT / path}")
    sys.exit(0)
