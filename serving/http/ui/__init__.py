"""The web UI: server-rendered pages (Jinja2) over what the JSON endpoints expose, with every
asset served by the service itself, so it works offline."""
