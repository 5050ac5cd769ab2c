"""Regenerate serving/grpc/generated/ from serving/grpc/proto/inference.proto (``make grpc-proto``).

Needs grpcio-tools (a dev dependency; the service only needs grpcio and protobuf). The modules
are committed; a test regenerates them into a temporary folder and fails when they differ.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO = HERE / "proto" / "inference.proto"
GENERATED = HERE / "generated"
FILES = ("inference_pb2.py", "inference_pb2.pyi", "inference_pb2_grpc.py")


def generate(out: Path) -> None:
    """Write the generated modules into ``out``."""
    from grpc_tools import protoc  # dev-only: imported when generating, never when serving

    out.mkdir(parents=True, exist_ok=True)
    argv = [
        "protoc",
        f"-I{PROTO.parent}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        str(PROTO),
    ]
    if protoc.main(argv) != 0:
        raise RuntimeError(f"protoc failed on {PROTO}")
    messages = out / "inference_pb2.py"
    # A pool of its own: the protocol's package and message names are those of other clients'
    # generated modules (tritonclient.grpc), which may be imported into the same process.
    text = messages.read_text(encoding="utf-8")
    text = text.replace(
        "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile(",
        "POOL = _descriptor_pool.DescriptorPool()\nDESCRIPTOR = POOL.AddSerializedFile(",
    )
    messages.write_text(text, encoding="utf-8")
    stubs = out / "inference_pb2.pyi"
    text = stubs.read_text(encoding="utf-8")
    text = text.replace(
        "DESCRIPTOR: _descriptor.FileDescriptor\n",
        "from google.protobuf import descriptor_pool as _descriptor_pool\n\n"
        "POOL: _descriptor_pool.DescriptorPool\n"
        "DESCRIPTOR: _descriptor.FileDescriptor\n",
    )
    stubs.write_text(text, encoding="utf-8")
    stub = out / "inference_pb2_grpc.py"
    # protoc writes a top-level import; the package needs its full name.
    text = stub.read_text(encoding="utf-8")
    text = text.replace(
        "import inference_pb2 as inference__pb2",
        "from serving.grpc.generated import inference_pb2 as inference__pb2",
    )
    stub.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else GENERATED)
