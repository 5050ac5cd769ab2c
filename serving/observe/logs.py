"""Logging: JSON lines (one object per line) or human-readable text, the request id in every
line written while a request is answered, and an access log written off the hot path.

``log_config`` is a :func:`logging.config.dictConfig` dictionary that ``python -m serving``
applies, and hands to uvicorn so that every server process logs the same way.
"""

from __future__ import annotations

import collections
import logging
import sys
import threading
import time
from datetime import UTC, datetime
from typing import IO, Any, Literal

import orjson

from serving.core.context import current_request_id

LogFormat = Literal["json", "text"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def resolve_format(setting: str, stream: IO[str] | None = None) -> LogFormat:
    """``auto``: text at a terminal, JSON otherwise (files, pipes, log collectors)."""
    if setting in ("json", "text"):
        return setting  # type: ignore[return-value]
    stream = stream or sys.stderr
    return "text" if stream.isatty() else "json"


_second: tuple[int, str] = (-1, "")
_MILLIS = [f".{ms:03d}+00:00" for ms in range(1000)]


def _timestamp(created: float) -> str:
    """ISO 8601 in UTC with milliseconds; the part up to the second is formatted once per
    second, the rest is looked up (one per access line: this is on the service's CPU)."""
    global _second
    second, millis = divmod(int(created * 1000), 1000)
    cached = _second  # one tuple, replaced whole: safe to share between threads
    if cached[0] != second:
        cached = _second = (
            second,
            datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S"),
        )
    return cached[1] + _MILLIS[millis]


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "message", "request_id"?, "exception"?}`` plus any
    ``extra`` fields given as ``extra={"fields": {...}}``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            entry["request_id"] = request_id
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def printable(text: str) -> str:
    """``text`` with every character that is not printable (line feeds, carriage returns,
    other control characters, Unicode line separators) written as its Python escape, so
    that what a client sent (a path, a header, a name) cannot start a log line of its own."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class TextFormatter(logging.Formatter):
    """The classic line, with ``[request id]`` after the logger name when there is one.

    A record is one line: its message is escaped (:func:`printable`). A traceback or stack
    follows on lines of its own, each indented, so a line that starts at its first column
    is always the start of a record."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        record.message = printable(record.getMessage())
        record.asctime = self.formatTime(record, self.datefmt)
        line = self.formatMessage(record)
        request_id = getattr(record, "request_id", None)
        if request_id:
            head, sep, tail = line.partition(": ")
            line = f"{head} [{printable(str(request_id))}]{sep}{tail}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        for text in (record.exc_text, record.stack_info and self.formatStack(record.stack_info)):
            if text:
                line += "".join(f"\n    {printable(part)}" for part in text.splitlines())
        return line


class RequestIdFilter(logging.Filter):
    """Stamps each record with the id of the request being answered in this context."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = current_request_id()
        return True


def log_config(level: str, fmt: LogFormat) -> dict[str, Any]:
    """dictConfig for the service and uvicorn: one stderr handler, the chosen format."""
    formatter = (
        "serving.observe.logs.JsonFormatter"
        if fmt == "json"
        else "serving.observe.logs.TextFormatter"
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": "serving.observe.logs.RequestIdFilter"}},
        "formatters": {"default": {"()": formatter}},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "default",
                "filters": ["request_id"],
            }
        },
        "root": {"handlers": ["default"], "level": level.upper()},
        "loggers": {
            # uvicorn configures its own handlers otherwise; route them through ours.
            "uvicorn": {"handlers": [], "propagate": True},
            "uvicorn.error": {"handlers": [], "propagate": True},
            "uvicorn.access": {"handlers": [], "propagate": True},
        },
    }


AccessEntry = tuple[float, str, str, str, int, float, str, str, int]
"""(time, request id, method, path, status, seconds, model, version, rows)"""
_LineKey = tuple[str, str, int, str, str]
"""(method, path, status, model, version): what most lines share with many others."""
MAX_CACHED_PARTS = 4096
"""Paths are chosen by clients: the cache of line parts is emptied when it grows beyond."""
MAX_CACHED_PATH = 256


class AccessLog:
    """One line per request, formatted and written by a background thread.

    The request path only appends a tuple to a deque (thread-safe, no formatting, no I/O);
    the thread wakes every ``interval`` seconds and writes what has gathered in one call.
    """

    def __init__(self, fmt: LogFormat, stream: IO[str] | None = None, interval: float = 0.2):
        self.fmt = fmt
        self._stream = stream
        self.interval = interval
        self._entries: collections.deque[AccessEntry] = collections.deque()
        self.add = self._entries.append
        self._parts: dict[_LineKey, tuple[str, str, str]] = {}
        """Per line key, the JSON text around the request id, the latency and the rows,
        escaped once (used by whoever flushes: the thread, or ``stop`` once it has ended)."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="servewell-access-log", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.flush()

    def flush(self) -> None:
        entries = self._entries
        lines = []
        line = self._json if self.fmt == "json" else AccessLog._text
        while entries:
            lines.append(line(entries.popleft()))
        if lines:
            stream = self._stream or sys.stderr
            try:
                stream.write("".join(lines))
                stream.flush()
            except (OSError, ValueError):  # stderr closed: nothing sensible to do
                pass

    def _json(self, e: AccessEntry) -> str:
        # Built as text, from parts escaped once per (method, path, status, model, version):
        # a line costs about a fifth of a dict through orjson, on the service's CPU. The
        # request id (validated), method, model name (a store name) and numbers need no
        # escaping; the path, which the client chose, is escaped by orjson.
        ts, rid, method, path, status, seconds, model, version, rows = e
        key = (method, path, status, model, version)
        parts = self._parts.get(key)
        if parts is None:
            parts = _json_parts(*key)
            # Paths of answered requests repeat; those of 4xx (scans, typos) and long ones
            # need not, and would only churn or bloat the cache.
            if status < 400 and len(path) <= MAX_CACHED_PATH:
                if len(self._parts) >= MAX_CACHED_PARTS:
                    self._parts.clear()
                self._parts[key] = parts
        head, middle, tail = parts
        if tail:
            return (
                f'{{"ts":"{_timestamp(ts)}"{head}{rid}{middle}{seconds * 1000:.3f}{tail}{rows}}}\n'
            )
        return f'{{"ts":"{_timestamp(ts)}"{head}{rid}{middle}{seconds * 1000:.3f}}}\n'

    @staticmethod
    def _text(e: AccessEntry) -> str:
        ts, rid, method, path, status, seconds, model, version, rows = e
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
        millis = int(ts * 1000) % 1000
        what = f" {printable(model)} v{version} rows={rows}" if model else ""
        return (
            f"{stamp},{millis:03d} INFO servewell.access [{printable(rid)}]: "
            f"{printable(method)} {printable(path)} {status} {seconds * 1000:.2f} ms{what}\n"
        )


def _json_parts(
    method: str, path: str, status: int, model: str, version: str
) -> tuple[str, str, str]:
    """The fixed text of an access line: before the request id, between it and the latency,
    and after the latency up to the rows (empty without a model)."""
    message = orjson.dumps(f"{method} {path} {status}").decode()
    quoted = orjson.dumps(path).decode()
    head = f',"level":"INFO","logger":"servewell.access","message":{message},"request_id":"'
    middle = f'","method":"{method}","path":{quoted},"status":{status},"latency_ms":'
    tail = f',"model":"{model}","version":{version},"rows":' if model else ""
    return head, middle, tail
