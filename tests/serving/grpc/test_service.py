"""The Open Inference Protocol over gRPC, driven with Triton's own client (tritonclient.grpc),
the standard health client and reflection, against the live server (real pool and models)."""

from __future__ import annotations

import asyncio
import csv
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.grpc.aio as tg_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tritonclient.utils import InferenceServerException

from serving.core.errors import InferenceError, OverloadedError, ServingError
from serving.execution.runtime import LoadedModel, RuntimePolicy, load
from serving.grpc.calls import Status
from serving.grpc.generated import inference_pb2 as pb
from serving.grpc.server import code_of
from serving.store import ModelStore
from tests.serving.conftest import RunningServer, quiet_settings, running_server
from tests.serving.process import free_port

TOKEN = "grpc-test-token"
CHURN_CSV = Path(__file__).resolve().parents[3] / "training" / "data" / "churn.csv"


@pytest.fixture(scope="module")
def live(trained_store: ModelStore) -> Iterator[tuple[RunningServer, str]]:
    port = free_port()
    settings = quiet_settings(trained_store, pool_size=1, grpc_port=port, admin_token=TOKEN)
    with running_server(settings) as running:
        yield running, f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def client(live: tuple[RunningServer, str]) -> Iterator[tg.InferenceServerClient]:
    c = tg.InferenceServerClient(live[1])
    yield c
    c.close()


def local(store: ModelStore, name: str, runtime: str) -> LoadedModel:
    version = store.production(name) or store.versions(name)[-1]
    return load(store, name, version, RuntimePolicy(prefer_onnx=runtime == "onnx"))


def runtime_of(client: tg.InferenceServerClient, name: str) -> str:
    platform = client.get_model_metadata(name).platform
    return "onnx" if platform == "onnxruntime_onnx" else "sklearn"


def status(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(InferenceServerException) as caught:
        call()
    text = caught.value.status() or ""
    return getattr(grpc.StatusCode, text.removeprefix("StatusCode.")), caught.value.message()


def test_health_and_metadata(client: tg.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("iris")
    assert client.is_model_ready("iris", "1")
    assert not client.is_model_ready("iris", "9")
    assert not client.is_model_ready("nope")
    server = client.get_server_metadata()
    assert server.name == "servewell"
    assert "model_repository" in server.extensions
    meta = client.get_model_metadata("iris")
    assert meta.name == "iris"
    assert list(meta.versions) == ["1"]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("input", "FP64", [-1, 4])
    ]
    assert [(t.name, t.datatype) for t in meta.outputs] == [
        ("predict", "BYTES"),
        ("predict_proba", "FP64"),
        ("explanation", "FP64"),
        ("explanation_all", "FP64"),
    ]


@pytest.mark.parametrize("datatype", ["FP64", "FP32", "INT64"])
def test_infer_equals_in_process_predictions(
    client: tg.InferenceServerClient, trained_store: ModelStore, datatype: str
) -> None:
    rng = np.random.default_rng(7)
    rows = rng.uniform(0, 30, size=(25, 30))
    dtype = {"FP64": np.float64, "FP32": np.float32, "INT64": np.int64}[datatype]
    sent = rows.astype(dtype)
    tensor = tg.InferInput("input", list(sent.shape), datatype)
    tensor.set_data_from_numpy(sent)
    outputs = [tg.InferRequestedOutput("predict"), tg.InferRequestedOutput("predict_proba")]
    result = client.infer("breast_cancer", [tensor], outputs=outputs, request_id="g-1")
    response = result.get_response()
    assert response.id == "g-1"
    assert response.model_version == "1"
    model = local(trained_store, "breast_cancer", runtime_of(client, "breast_cancer"))
    expected = model.predict(sent.astype(np.float64), want_probabilities=True)
    labels = [x.decode() for x in result.as_numpy("predict")]  # BYTES: the class names
    assert labels == [str(x) for x in expected.predictions.tolist()]
    assert expected.probabilities is not None
    np.testing.assert_allclose(result.as_numpy("predict_proba"), expected.probabilities, rtol=1e-6)


def test_one_tensor_per_feature_with_bytes_for_the_mixed_model(
    client: tg.InferenceServerClient, trained_store: ModelStore
) -> None:
    with CHURN_CSV.open(encoding="utf-8") as handle:
        records = list(csv.DictReader(handle))[:40]
    manifest = trained_store.manifest("churn", 1)
    datatypes = {"integer": ("INT64", np.int64), "numeric": ("FP64", np.float64)}
    inputs, table = [], []
    for feature in manifest.features:
        values = [r[feature.name] for r in records]
        if feature.kind == "boolean":
            datatype, data = "BOOL", np.array([v == "True" for v in values])
        elif feature.kind == "categorical":
            datatype, data = "BYTES", np.array([v.encode() for v in values], dtype=object)
        else:
            datatype, dtype = datatypes[feature.kind.value]
            data = np.array(values, dtype=np.float64).astype(dtype)
        tensor = tg.InferInput(feature.name, [len(records)], datatype)
        tensor.set_data_from_numpy(data)
        inputs.append(tensor)
        table.append(data)
    result = client.infer("churn", inputs)
    model = local(trained_store, "churn", runtime_of(client, "churn"))
    encoded = np.zeros((len(records), len(manifest.features)))
    for j, feature in enumerate(manifest.features):
        if feature.kind == "categorical":
            positions = {c: i for i, c in enumerate(feature.categories or [])}
            encoded[:, j] = [positions[v.decode()] for v in table[j]]
        else:
            encoded[:, j] = table[j].astype(np.float64)
    expected = model.predict(encoded, want_probabilities=True)
    assert [x.decode() for x in result.as_numpy("predict")] == expected.predictions.tolist()
    assert expected.probabilities is not None
    np.testing.assert_allclose(result.as_numpy("predict_proba"), expected.probabilities, rtol=1e-6)


def test_typed_contents_are_accepted_as_raw_ones_are(live: tuple[RunningServer, str]) -> None:
    request = pb.ModelInferRequest(model_name="iris")
    tensor = request.inputs.add(name="input", datatype="FP64", shape=[2, 4])
    tensor.contents.fp64_contents.extend([5.1, 3.5, 1.4, 0.2, 6.7, 3.0, 5.2, 2.3])
    request.outputs.add(name="predict")
    with grpc.insecure_channel(live[1]) as channel:
        infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        response, call = infer.with_call(request, metadata=[("x-request-id", "typed-1")])
    assert [o.name for o in response.outputs] == ["predict"]
    raw = response.raw_output_contents[0]
    labels, offset = [], 0
    while offset < len(raw):  # BYTES: a 4-byte little-endian length, then the bytes
        size = int.from_bytes(raw[offset : offset + 4], "little")
        labels.append(raw[offset + 4 : offset + 4 + size].decode())
        offset += 4 + size
    assert labels == ["setosa", "virginica"]
    trailing = dict(call.trailing_metadata())
    assert trailing["x-request-id"] == "typed-1"
    assert trailing["x-model-version"] == "1"


def test_client_mistakes_get_clear_status_codes(client: tg.InferenceServerClient) -> None:
    short = tg.InferInput("input", [1, 3], "FP64")
    short.set_data_from_numpy(np.array([[1.0, 2.0, 3.0]]))
    code, message = status(lambda: client.infer("iris", [short]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "shape must be [rows, 4]" in message
    code, message = status(lambda: client.infer("nope", [short]))
    assert code == grpc.StatusCode.NOT_FOUND
    assert "no model named 'nope'" in message
    code, message = status(lambda: client.infer("iris", [short], model_version="7"))
    assert code == grpc.StatusCode.NOT_FOUND
    code, message = status(lambda: client.infer("iris", [short], model_version="01"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    text = tg.InferInput("input", [1, 4], "BYTES")
    text.set_data_from_numpy(np.array([[b"a", b"b", b"c", b"d"]], dtype=object))
    code, _ = status(lambda: client.infer("iris", [text]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    missing = tg.InferRequestedOutput("nope")
    good = tg.InferInput("input", [1, 4], "FP64")
    good.set_data_from_numpy(np.array([[5.1, 3.5, 1.4, 0.2]]))
    code, message = status(lambda: client.infer("iris", [good], outputs=[missing]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown output 'nope'" in message


def test_garbage_bytes_are_an_invalid_argument(live: tuple[RunningServer, str]) -> None:
    with grpc.insecure_channel(live[1]) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as caught:
            infer(b"\xff\xff\xff garbage")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_the_repository_extension_needs_the_admin_token(client: tg.InferenceServerClient) -> None:
    code, _ = status(lambda: client.get_model_repository_index())
    assert code == grpc.StatusCode.UNAUTHENTICATED
    wrong = {"authorization": "Bearer nope"}
    code, _ = status(lambda: client.get_model_repository_index(headers=wrong))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    auth = {"authorization": f"Bearer {TOKEN}"}
    index = client.get_model_repository_index(headers=auth)
    assert {(m.name, m.state) for m in index.models} >= {("iris", "READY"), ("churn", "READY")}
    client.unload_model("diabetes", headers=auth)
    assert not client.is_model_ready("diabetes")
    client.load_model("diabetes", headers=auth)
    assert client.is_model_ready("diabetes")


def test_health_service_and_reflection(live: tuple[RunningServer, str]) -> None:
    with grpc.insecure_channel(live[1]) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (answer,) = list(stub.ServerReflectionInfo(iter([request])))
        names = {s.name for s in answer.list_services_response.service}
        assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names
        by_symbol = reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="inference.GRPCInferenceService"
        )
        (found,) = list(stub.ServerReflectionInfo(iter([by_symbol])))
        assert found.file_descriptor_response.file_descriptor_proto


def test_500_concurrent_calls_each_get_their_own_answer(
    live: tuple[RunningServer, str], trained_store: ModelStore, client: tg.InferenceServerClient
) -> None:
    rng = np.random.default_rng(11)
    rows = np.round(rng.uniform([4.3, 2.0, 1.0, 0.1], [7.9, 4.4, 6.9, 2.5], size=(500, 4)), 2)

    async def run() -> list[np.ndarray[Any, Any]]:
        async with tg_aio.InferenceServerClient(live[1]) as aio:

            async def one(row: np.ndarray[Any, Any], i: int) -> np.ndarray[Any, Any]:
                tensor = tg_aio.InferInput("input", [1, 4], "FP64")
                tensor.set_data_from_numpy(row.reshape(1, 4))
                out = [tg_aio.InferRequestedOutput("predict_proba")]
                result = await aio.infer("iris", [tensor], outputs=out, request_id=f"c{i}")
                assert result.get_response().id == f"c{i}"
                proba: np.ndarray[Any, Any] = result.as_numpy("predict_proba")
                return proba

            return await asyncio.gather(*(one(row, i) for i, row in enumerate(rows)))

    answers = asyncio.run(run())
    model = local(trained_store, "iris", runtime_of(client, "iris"))
    expected = model.predict(rows, want_probabilities=True).probabilities
    assert expected is not None
    np.testing.assert_allclose(np.vstack(answers), expected, rtol=1e-6)


def test_an_expired_deadline_is_deadline_exceeded(client: tg.InferenceServerClient) -> None:
    rows = np.zeros((10_000, 30))
    tensor = tg.InferInput("input", list(rows.shape), "FP64")
    tensor.set_data_from_numpy(rows)
    code, _ = status(lambda: client.infer("breast_cancer", [tensor], client_timeout=0.001))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_grpc_is_off_with_port_zero(trained_store: ModelStore) -> None:
    with running_server(quiet_settings(trained_store, pool_size=1)) as running:
        assert running.app.state.grpc_port is None


def test_calls_are_counted_in_the_metrics_by_status_code(
    live: tuple[RunningServer, str], client: tg.InferenceServerClient
) -> None:
    good = tg.InferInput("input", [1, 4], "FP64")
    good.set_data_from_numpy(np.array([[5.1, 3.5, 1.4, 0.2]]))
    client.infer("iris", [good])
    short = tg.InferInput("input", [1, 3], "FP64")
    short.set_data_from_numpy(np.array([[1.0, 2.0, 3.0]]))
    status(lambda: client.infer("iris", [short]))
    with live[0].client() as http:
        text = http.get("/metrics").text
    endpoint = 'endpoint="/inference.GRPCInferenceService/ModelInfer"'
    lines = [line for line in text.splitlines() if line.startswith("servewell_requests_total{")]
    ok = [line for line in lines if endpoint in line and 'status="0"' in line and "iris" in line]
    invalid = [line for line in lines if endpoint in line and 'status="3"' in line]
    assert ok
    assert 'version="1"' in ok[0]
    assert invalid


def test_messages_over_the_limit_are_refused(trained_store: ModelStore) -> None:
    port = free_port()
    settings = quiet_settings(
        trained_store, pool_size=1, grpc_port=port, grpc_max_message_bytes=1000
    )
    with running_server(settings), tg.InferenceServerClient(f"127.0.0.1:{port}") as small:
        rows = np.zeros((100, 4))
        tensor = tg.InferInput("input", list(rows.shape), "FP64")
        tensor.set_data_from_numpy(rows)
        code, _ = status(lambda: small.infer("iris", [tensor]))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        one = tg.InferInput("input", [1, 4], "FP64")
        one.set_data_from_numpy(np.array([[5.1, 3.5, 1.4, 0.2]]))
        assert small.infer("iris", [one]).as_numpy("predict") is not None


def test_a_taken_port_leaves_http_serving(trained_store: ModelStore) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = quiet_settings(trained_store, pool_size=1, grpc_port=port)
        with running_server(settings) as running, running.client() as http:
            assert running.app.state.grpc_port is None
            assert http.post(
                "/models/iris/predict", json={"rows": [[5.1, 3.5, 1.4, 0.2]]}
            ).is_success


def test_every_domain_error_has_its_status_code() -> None:
    """Nothing a client causes is UNKNOWN or INTERNAL: only a model's own failure is."""

    def subclasses(kind: type[ServingError]) -> list[type[ServingError]]:
        return [kind, *(s for sub in kind.__subclasses__() for s in subclasses(sub))]

    for kind in subclasses(ServingError):
        code = code_of(kind.__new__(kind))
        assert code is not Status.UNKNOWN
        assert (code is Status.INTERNAL) == issubclass(kind, InferenceError) or kind is ServingError
    assert code_of(OverloadedError("full", 1.0)) is Status.RESOURCE_EXHAUSTED


def test_shedding_and_expired_deadlines_leave_no_work_behind(trained_store: ModelStore) -> None:
    """With the only worker stopped: a call over the queue's limit is RESOURCE_EXHAUSTED at
    once; a call whose deadline passes while it waits is DEADLINE_EXCEEDED and its rows are
    withdrawn, never predicted."""
    port = free_port()
    settings = quiet_settings(
        trained_store,
        inference="pool",
        pool_size=1,
        grpc_port=port,
        max_queue_rows=8,
        request_timeout_s=60,
    )
    with running_server(settings) as running, grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        infer = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")

        def rows(n: int) -> bytes:
            request = pb.ModelInferRequest(model_name="iris")
            request.inputs.add(name="input", datatype="FP64", shape=[n, 4])
            request.raw_input_contents.append(np.tile([5.1, 3.5, 1.4, 0.2], n).tobytes())
            return bytes(request.SerializeToString())

        worker = running.app.state.dataplane.executor.pids[0]
        batcher = running.app.state.dataplane.resolve("iris").batcher
        os.kill(worker, signal.SIGSTOP)
        try:
            busy = infer.future(rows(1), timeout=30)  # on the stopped worker
            assert until(lambda: batcher.in_flight == 1)
            waiting = infer.future(rows(5), timeout=30)
            assert until(lambda: batcher.queued_rows == 5)
            with pytest.raises(grpc.RpcError) as shed:
                infer(rows(4), timeout=10)
            assert shed.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "queue is full" in (shed.value.details() or "")
            with pytest.raises(grpc.RpcError) as late:
                infer(rows(3), timeout=0.3)
            assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert until(lambda: batcher.withdrawn == 1)
            assert batcher.queued_rows == 5
        finally:
            os.kill(worker, signal.SIGCONT)
        for call in (busy, waiting):
            assert pb.ModelInferResponse.FromString(call.result()).outputs
        assert batcher.batches == 2  # 1 row, then 5: the expired 3 never went to the worker


def until(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False
