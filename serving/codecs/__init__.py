"""Request and response encodings: the typed JSON of ``/models/{name}/predict`` and the Open
Inference Protocol (JSON and binary tensors), each turning bytes into rows and predictions
back into bytes. No web framework here."""
