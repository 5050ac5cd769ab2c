"""The gRPC load driver, wrk's counterpart for ``ModelInfer``: client processes, each one
``grpc.aio`` channel (one HTTP/2 connection, as tritonclient opens) with its share of the calls in
flight, sending serialized ``ModelInferRequest`` records (:func:`bench.bodies.write`) in turn as
bytes, so no client time goes to building messages. It prints the ``@@WRK_JSON`` line
``post.lua`` prints, so :func:`bench.wrk.finish` reads both drivers alike.

    python bench/grpc_load.py HOST:PORT BODIES CONNECTIONS SECONDS TIMEOUT_S [PROCESSES]
"""

import asyncio
import json
import math
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np

METHOD = "/inference.GRPCInferenceService/ModelInfer"
SCHEME = "grpc://"
_NUMPY = {"FP64": "<f8", "FP32": "<f4", "INT64": "<i8", "INT32": "<i4", "BOOL": "|b1"}


def command(target: str, bodies: Path, conns: int, seconds: float, timeout_s: float) -> list[str]:
    """The driver's argv for ``target`` (``grpc://host:port``): two client processes, as one
    Python client cannot keep a server on another core busy with single rows."""
    processes = 1 if conns < 4 else 2
    args = [target.removeprefix(SCHEME), str(bodies), str(conns), str(seconds), str(timeout_s)]
    return [sys.executable, __file__, *args, str(processes)]


def read(path: Path) -> list[bytes]:
    """The records of a bodies file (``<0> <length>\\n<body>`` each)."""
    out, data, at = [], path.read_bytes(), 0
    while at < len(data):
        end = data.index(b"\n", at)
        length = int(data[at:end].split()[1])
        out.append(data[end + 1 : end + 1 + length])
        at = end + 1 + length
    return out


async def _load(
    target: str, bodies: list[bytes], conns: int, begin: float, seconds: float, limit_s: float
) -> Any:
    """Connect, wait for the shared start (wall clock), load for ``seconds``."""
    latencies: list[int] = []
    errors = {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0}
    async with grpc.aio.insecure_channel(target, options=[_UNLIMITED, _UNLIMITED_SEND]) as channel:
        call = channel.unary_unary(METHOD)  # bytes in, bytes out
        await channel.channel_ready()
        await asyncio.sleep(max(0.0, begin - time.time()))
        t0 = time.perf_counter()
        until = t0 + seconds

        async def user(first: int) -> None:
            i = first
            while (started := time.perf_counter()) < until:
                try:
                    await call(bodies[i % len(bodies)], timeout=limit_s)
                    latencies.append(round((time.perf_counter() - started) * 1e6))
                except grpc.aio.AioRpcError as exc:
                    code = exc.code()
                    kind = {grpc.StatusCode.DEADLINE_EXCEEDED: "timeout"}.get(code, "status")
                    errors["read" if code is grpc.StatusCode.UNAVAILABLE else kind] += 1
                i += conns

        await asyncio.gather(*(user(k) for k in range(conns)))
    return latencies, errors, time.perf_counter() - t0


_UNLIMITED = ("grpc.max_receive_message_length", -1)
_UNLIMITED_SEND = ("grpc.max_send_message_length", -1)


def _worker(argv: Sequence[str]) -> None:
    """One client process: waits until the shared start, loads, prints its figures as JSON."""
    target, path, conns, seconds, timeout, start = argv
    bodies = read(Path(path))
    loaded = _load(target, bodies, int(conns), float(start), float(seconds), float(timeout))
    latencies, errors, took = asyncio.run(loaded)
    print(json.dumps({"latencies": latencies, "errors": errors, "duration_s": took}))


def summary(parts: Sequence[dict[str, Any]]) -> str:
    """The ``@@WRK_JSON`` line of the processes' figures (latency percentiles over all calls)."""
    latencies = np.sort(np.concatenate([np.asarray(p["latencies"], dtype=np.int64) for p in parts]))
    errors = {k: sum(p["errors"][k] for p in parts) for k in parts[0]["errors"]}

    def pct(q: float) -> int:
        return int(latencies[min(len(latencies) - 1, math.ceil(q * len(latencies)) - 1)])

    figures = {"max": pct(1.0), "p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99)}
    if not len(latencies):
        figures = dict.fromkeys(figures, 0)
    duration = max(p["duration_s"] for p in parts)
    result = {"duration_us": round(duration * 1e6), "requests": len(latencies), "errors": errors}
    return "@@WRK_JSON " + json.dumps(result | {"latency_us": figures})


def main(argv: Sequence[str]) -> int:
    if argv and argv[0] == "--worker":
        _worker(argv[1:])
        return 0
    target, path, conns, seconds, timeout, *rest = argv
    processes = int(rest[0]) if rest else 1
    shares = [int(conns) // processes + (k < int(conns) % processes) for k in range(processes)]
    start = time.time() + 1.0  # every process imported and connected before the clock runs
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--worker",
                target,
                path,
                str(share),
                seconds,
                timeout,
                str(start),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for share in shares
        if share
    ]
    outputs = [proc.communicate()[0] for proc in procs]
    if any(proc.returncode for proc in procs):
        print(f"a client process failed: {[p.returncode for p in procs]}", file=sys.stderr)
        return 1
    print(summary([json.loads(out) for out in outputs]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
