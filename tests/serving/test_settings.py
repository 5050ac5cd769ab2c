"""Settings come from SERVEWELL_* variables, and every field is documented."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from serving.settings import Settings, default_pool_size


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("SERVEWELL_")]:
        monkeypatch.delenv(name)
    settings = Settings()
    assert settings.store == Path("models")
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.inference == "auto"
    assert settings.loop == "uvloop"
    cores = os.cpu_count() or 1
    assert settings.workers == cores  # one server process per core
    assert settings.pool_size == max(1, cores // cores - 1) == default_pool_size(cores) == 1


def test_one_server_process_leaves_the_other_cores_to_its_pool(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in [n for n in os.environ if n.startswith("SERVEWELL_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("SERVEWELL_WORKERS", "1")
    assert Settings().pool_size == max(1, (os.cpu_count() or 1) - 1)
    monkeypatch.setenv("SERVEWELL_POOL_SIZE", "3")  # given: kept
    assert Settings().pool_size == 3


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVEWELL_STORE", "/srv/models")
    monkeypatch.setenv("SERVEWELL_PORT", "9001")
    monkeypatch.setenv("SERVEWELL_POOL_SIZE", "3")
    monkeypatch.setenv("SERVEWELL_MAX_BATCH_DELAY_MS", "0.5")
    monkeypatch.setenv("SERVEWELL_SIGNING_KEY", "hush-hush")
    monkeypatch.setenv("SERVEWELL_LOOP", "asyncio")
    settings = Settings()
    assert settings.store == Path("/srv/models")
    assert settings.port == 9001
    assert settings.pool_size == 3
    assert settings.max_batch_delay_ms == 0.5
    assert settings.signing_key_bytes == b"hush-hush"
    assert settings.loop == "asyncio"
    assert "hush-hush" not in repr(settings)  # secrets stay out of logs


def test_every_setting_has_a_docstring() -> None:
    for name, field in Settings.model_fields.items():
        assert field.description, name


def test_an_empty_signing_key_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVEWELL_SIGNING_KEY", "")
    with pytest.raises(ValueError, match="SERVEWELL_SIGNING_KEY is set but empty"):
        Settings()
