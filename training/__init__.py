"""servewell training: specs in, versioned artifacts out."""
