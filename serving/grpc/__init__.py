"""The Open Inference Protocol over gRPC: the server (:mod:`serving.grpc.server`), its codec on
the one request path (:mod:`serving.grpc.codec`) and the modules protoc generates from
``proto/inference.proto`` (:mod:`serving.grpc.generated`, ``make grpc-proto``)."""
