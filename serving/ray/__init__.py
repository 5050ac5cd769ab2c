"""The same service as Ray Serve replicas, for when one machine is not enough."""
