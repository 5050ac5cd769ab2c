"""Load benchmarks of servewell (``make bench``; bench/README.md)."""
