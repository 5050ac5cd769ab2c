"""The Open Inference Protocol (KServe v2 / Triton HTTP), transport-agnostic.

``tensors``: datatypes, request parsing (JSON and Triton's binary tensor data extension),
response encoding. ``signature``: a model's inputs and outputs as tensors, from its manifest.
``service``: an inference request through the data plane. No FastAPI or Starlette here; the
HTTP mapping is ``serving.http.routes.v2`` and ``serving.http.edge``.
"""
