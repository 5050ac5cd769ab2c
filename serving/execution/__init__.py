"""Where predictions are computed: the process pool that holds the models (and its
messages and shared memory), the inline executor, and the runtimes (ONNX Runtime,
scikit-learn)."""
