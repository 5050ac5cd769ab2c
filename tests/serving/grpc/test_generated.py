"""The committed generated modules are what the .proto gives (``make grpc-proto`` otherwise)."""

from __future__ import annotations

from pathlib import Path

from serving.grpc.generate import FILES, GENERATED, generate


def test_generated_modules_are_current(tmp_path: Path) -> None:
    generate(tmp_path)
    stale = [f for f in FILES if (tmp_path / f).read_bytes() != (GENERATED / f).read_bytes()]
    assert not stale, f"{stale} differ from serving/grpc/proto/inference.proto: run make grpc-proto"
