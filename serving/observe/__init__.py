"""What the service tells about itself: Prometheus metrics, input drift, logs."""
