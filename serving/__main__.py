"""``python -m serving``: serve the model store with uvicorn."""

from __future__ import annotations

import logging

import uvicorn

from serving.settings import Settings


def main() -> None:
    """Start the service with the settings from the environment; Ctrl-C stops it cleanly."""
    settings = Settings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    print(
        f"servewell: serving {settings.store.resolve()} on http://{settings.host}:{settings.port}"
    )
    print(f"servewell: API docs at http://{settings.host}:{settings.port}/docs", flush=True)
    uvicorn.run(
        "serving.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.access_log,
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()
