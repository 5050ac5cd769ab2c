"""HTTP routes, one module per resource. They only translate between HTTP and the data plane."""
