"""Score a CSV file of any size with a stored model, in bounded memory.

The file is read in chunks of ``chunk_rows`` rows; each chunk is checked against the model's
feature schema (training/csv_rows.py: the service's rules, applied to whole columns), encoded
as the service encodes rows, and predicted by the runtime the service would choose
(serving.execution.runtime.load: ONNX Runtime where the version's ONNX graph passed parity,
scikit-learn otherwise). Predictions are appended to the output chunk by chunk, one output line
per input
row in input order, each starting with the row's number (data rows count from 1; the header is
not a row); a refused row gets empty fields, and its problems go to a side file
(``<out>.errors.csv``: row, column, reason), rather than stopping the run. Memory therefore
depends on the chunk size, not on the file size.

Both files are written under temporary names and renamed when the run completes: an
interrupted run leaves no half-written output behind.
"""

from __future__ import annotations

import csv
import os
import queue
import re
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO, TextIO, TypeVar

import numpy as np
import numpy.typing as npt
import pandas as pd

from serving.execution.runtime import LoadedModel, RuntimeName, RuntimePolicy, load
from serving.store import Manifest, ModelStore, StoreError, Task
from training.csv_rows import EncodedChunk, RowErrors, encode_chunk, read_dtypes
from training.datasets import MISSING_MARKERS
from training.errors import ScoreError
from training.score_lines import ScoreWriter, cell

DEFAULT_CHUNK_ROWS = 50_000
"""Rows per chunk: large enough that per-chunk overheads vanish (reading, one runtime call),
small enough that a chunk of a wide table stays small (30 features: about 50 MB above the
process's own 170 MB; 100 000 rows took 160 MB and were no faster)."""


@dataclass(frozen=True)
class ScoreSummary:
    name: str
    version: int
    runtime: RuntimeName
    rows: int
    scored: int
    refused: int
    seconds: float
    out: Path
    errors: Path
    out_of_range: dict[str, int]
    """Per feature with any: how many scored rows had a value outside the training range."""

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("inf")


def peak_memory_mb() -> float:
    """This process's peak resident memory in MiB since it started.

    Linux's VmHWM belongs to the process's own address space. ``ru_maxrss`` is not used where
    VmHWM exists: across exec it keeps the peak of the address space being replaced, so a
    process started from a large one (a test runner) reports its parent's size."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    per_mb = 1024 * 1024 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / per_mb


def errors_path(out: Path) -> Path:
    """Where the refused rows of ``out`` are described: ``out.csv`` -> ``out.errors.csv``."""
    return out.with_name(out.name.removesuffix(".csv") + ".errors.csv")


class Progress:
    """A one-line progress display on stderr (rewritten in place on a terminal, else silent
    until the end), driven by how much of the input file was read."""

    def __init__(self, total_bytes: int, stream: IO[str] | None = None) -> None:
        self.total = max(total_bytes, 1)
        self.stream = stream if stream is not None else sys.stderr
        self.live = self.stream.isatty()
        self.start = time.perf_counter()
        self.shown = 0.0

    def update(self, done_bytes: int, rows: int) -> None:
        now = time.perf_counter()
        if not self.live or now - self.shown < 0.2:
            return
        self.shown = now
        share = min(done_bytes / self.total, 1.0)
        bar = "#" * int(share * 30)
        rate = rows / max(now - self.start, 1e-9)
        self.stream.write(f"\r[{bar:<30}] {share:6.1%}  {rows:,} rows  {rate:,.0f} rows/s")
        self.stream.flush()

    def close(self) -> None:
        if self.live:
            self.stream.write("\n")
            self.stream.flush()


_SKIPPED = re.compile(r"Skipping line (\d+): (.*)")


@dataclass(frozen=True)
class _Chunk:
    frame: pd.DataFrame
    """The feature columns of the rows read."""
    malformed: list[tuple[int, str]]
    """Rows the reader could not split into the header's columns: (row number, reason)."""
    done_bytes: int


def _chunks(path: Path, manifest: Manifest, chunk_rows: int) -> Iterator[_Chunk]:
    names = manifest.feature_names
    try:
        with path.open("rb") as raw:
            header = pd.read_csv(raw, nrows=0, skipinitialspace=True).columns
            missing = [n for n in names if n not in header]
            if missing:
                raise ScoreError(
                    f"{path} lacks the feature column(s) {missing}; "
                    f"{manifest.name} v{manifest.version} needs {names}"
                )
            raw.seek(0)
            reader = pd.read_csv(
                raw,
                dtype=read_dtypes(manifest.features),
                skipinitialspace=True,
                # The cells training reads as missing, and only those.
                keep_default_na=False,
                na_values=sorted(MISSING_MARKERS),
                chunksize=chunk_rows,
                # Whole chunks at once: no mixed-type columns inside a chunk (and no warning).
                low_memory=False,
                # A row with more fields than the header (a stray comma shifts its values) is
                # skipped with a warning naming its line; not reading every column (usecols)
                # would have let it through, scored on shifted values.
                on_bad_lines="warn",
            )
            with reader:
                while True:
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always", pd.errors.ParserWarning)
                        frame = next(reader, None)
                    malformed = [
                        (int(m.group(1)) - 1, m.group(2).strip())  # line 1 is the header
                        for w in caught
                        for m in _SKIPPED.finditer(str(w.message))
                    ]
                    if frame is None:
                        if malformed:  # bad lines at the very end
                            yield _Chunk(pd.DataFrame(columns=names), malformed, raw.tell())
                        return
                    yield _Chunk(frame[names], malformed, raw.tell())
    except FileNotFoundError:
        raise ScoreError(f"data file not found: {path}") from None
    except pd.errors.EmptyDataError:
        raise ScoreError(f"data file {path} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ScoreError(f"data file {path} is not a readable CSV: {exc}") from None


_T = TypeVar("_T")


def _read_ahead(items: Iterator[_T]) -> Iterator[_T]:
    """``items``, the next one produced by a thread while the caller works on the current one:
    pandas parses CSV text without holding the GIL, so reading overlaps checking, predicting
    and writing. At most one item waits; so memory holds three chunks at most."""
    slot: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def offer(entry: tuple[bool, Any]) -> bool:
        """Hand ``entry`` over unless the caller has gone (then never block)."""
        while not stop.is_set():
            try:
                slot.put(entry, timeout=0.1)
            except queue.Full:
                continue
            return True
        return False

    def produce() -> None:
        try:
            for item in items:
                if not offer((True, item)):
                    return
            offer((False, None))
        except BaseException as exc:  # handed to the caller, raised there
            offer((False, exc))

    thread = threading.Thread(target=produce, name="csv-reader", daemon=True)
    thread.start()
    try:
        while True:
            more, value = slot.get()
            if not more:
                if value is not None:
                    raise value
                return
            yield value
    finally:
        stop.set()
        thread.join()


def _with_malformed(
    chunk: EncodedChunk, first_row: int, malformed: list[tuple[int, str]]
) -> EncodedChunk:
    """The chunk with the reader's skipped rows put back in their places, refused."""
    if not malformed:
        return chunk
    n = len(chunk.refused) + len(malformed)
    skipped = np.array([row - first_row for row, _ in malformed], dtype=np.int64)
    kept = np.setdiff1d(np.arange(n), skipped)
    rows = np.full((n, chunk.rows.shape[1]), np.nan)
    rows[kept] = chunk.rows
    refused = np.ones(n, dtype=bool)
    refused[kept] = chunk.refused
    errors = RowErrors(
        np.concatenate([kept[chunk.errors.rows], skipped]),
        [*chunk.errors.columns, *([""] * len(malformed))],
        [*chunk.errors.reasons, *(f"row not read: {reason}" for _, reason in malformed)],
    )
    return EncodedChunk(rows, refused, errors, chunk.out_of_range)


def score_csv(
    store: ModelStore,
    name: str,
    data: Path,
    out: Path,
    *,
    version: int | None = None,
    probabilities: bool = False,
    chunk_rows: int | None = None,
    threads: int | None = None,
    prefer_onnx: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> ScoreSummary:
    """Score every row of the CSV ``data`` with ``name`` (its production version unless
    ``version`` is given) into ``out``, ``chunk_rows`` at a time (None: DEFAULT_CHUNK_ROWS);
    refused rows are described in ``errors_path(out)``.
    The runtime is the service's choice (ONNX Runtime where verified) unless ``prefer_onnx`` is
    False; ``threads`` (default: every core) is what it computes with.

    Row numbers (first column of both files) count data rows from 1: the header is not a row,
    so a row's number is its line number minus one when each row is one line. A line with more
    fields than the header is refused as a whole (its column in the errors file is empty).
    """
    if chunk_rows is None:
        chunk_rows = DEFAULT_CHUNK_ROWS
    model = _model(store, name, version, probabilities, threads, prefer_onnx)
    manifest = model.manifest
    writer = ScoreWriter(model, probabilities)
    errors = errors_path(out)
    out_tmp = out.with_name(out.name + ".partial")
    errors_tmp = errors.with_name(errors.name + ".partial")
    start = time.perf_counter()
    try:
        with (
            out_tmp.open("wb") as out_file,
            errors_tmp.open("w", encoding="utf-8", newline="") as errors_file,
        ):
            total, scored, out_of_range = _score_chunks(
                writer, data, manifest, chunk_rows, out_file, errors_file, progress
            )
        out_tmp.replace(out)
        errors_tmp.replace(errors)
    finally:
        out_tmp.unlink(missing_ok=True)
        errors_tmp.unlink(missing_ok=True)
    return ScoreSummary(
        name=name,
        version=manifest.version,
        runtime=model.runtime,
        rows=total,
        scored=scored,
        refused=total - scored,
        seconds=time.perf_counter() - start,
        out=out,
        errors=errors,
        out_of_range={
            f.name: int(c) for f, c in zip(manifest.features, out_of_range, strict=True) if c
        },
    )


def _model(
    store: ModelStore,
    name: str,
    version: int | None,
    probabilities: bool,
    threads: int | None,
    prefer_onnx: bool,
) -> LoadedModel:
    """The version to score with (production unless given), loaded into its runtime."""
    if version is None:
        version = store.production(name)
        if version is None:
            raise StoreError(f"model {name!r} has no production version; give VERSION=n")
    policy = RuntimePolicy(prefer_onnx=prefer_onnx, onnx_threads=threads or os.cpu_count() or 1)
    model = load(store, name, version, policy)
    if probabilities and model.manifest.task != Task.CLASSIFICATION:
        raise ScoreError(f"{name} is a regressor: it has no class probabilities")
    return model


def _score_chunks(
    writer: ScoreWriter,
    data: Path,
    manifest: Manifest,
    chunk_rows: int,
    out_file: BinaryIO,
    errors_file: TextIO,
    progress: Callable[[int, int], None] | None,
) -> tuple[int, int, npt.NDArray[np.int64]]:
    """Score ``data`` chunk by chunk into the open files; return the rows read, the rows
    scored and, per feature, how many values lay outside the training range."""
    total = scored = 0
    out_of_range = np.zeros(len(manifest.features), dtype=np.int64)
    out_file.write(b",".join(cell(h) for h in writer.header) + b"\n")
    error_writer = csv.writer(errors_file, lineterminator="\n")
    error_writer.writerow(["row", "column", "reason"])
    for read in _read_ahead(_chunks(data, manifest, chunk_rows)):
        chunk = encode_chunk(read.frame, manifest.features)
        chunk = _with_malformed(chunk, total + 1, read.malformed)
        out_file.write(writer.text(total + 1, chunk.rows, chunk.refused))
        good = ~chunk.refused
        if len(chunk.errors.rows):
            numbers = chunk.errors.rows + total + 1
            order = np.argsort(numbers, kind="stable")
            error_writer.writerows(
                (int(numbers[k]), chunk.errors.columns[k], chunk.errors.reasons[k]) for k in order
            )
        total += len(chunk.refused)
        scored += int(np.count_nonzero(good))
        out_of_range += chunk.out_of_range
        if progress is not None:
            progress(read.done_bytes, total)
    return total, scored, out_of_range
