"""servewell: serve scikit-learn models fast and carefully."""
