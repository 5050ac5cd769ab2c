"""Feedback: true labels for captured predictions, checked item by item.

Applications send a list of ``{"request_id": ..., "row": 0, "label": ...}`` (``"value"`` for a
regressor). An item the service cannot use is refused on its own, with the reason, and the
others go on; an item naming a prediction that was never captured is ``unknown``; the rest are
``joined``: stored in one transaction, replacing a label sent before for the same row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from serving.capture.records import Label
from serving.store import Manifest, Task

if TYPE_CHECKING:
    from serving.capture.store import CaptureStore

JOINED, UNKNOWN, REFUSED = "joined", "unknown", "refused"
MAX_ID = 200
"""Longest request id kept (the capture table's column)."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one item, in the order sent."""

    index: int
    status: str
    request_id: str | None = None
    row: int | None = None
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "status": self.status}
        if self.request_id is not None:
            out["request_id"] = self.request_id
        if self.row is not None:
            out["row"] = self.row
        if self.reason is not None:
            out["reason"] = self.reason
        return out


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _matches(label: Any, cls: Any) -> bool:
    """JSON equality: ``true`` is not ``1``, ``1`` is ``1.0``."""
    if isinstance(cls, bool) or isinstance(label, bool):
        return isinstance(cls, bool) and isinstance(label, bool) and cls == label
    if _is_number(cls):
        return _is_number(label) and label == cls
    return bool(type(label) is type(cls) and label == cls)


def _target(manifest: Manifest, item: dict[str, Any]) -> tuple[Any, str | None]:
    """The item's label, or why it cannot be one for this model."""
    if manifest.task == Task.CLASSIFICATION:
        if "label" not in item:
            return None, "a classifier's feedback gives 'label', one of the model's classes"
        label = item["label"]
        classes = manifest.target.classes or []
        for cls in classes:
            if _matches(label, cls):
                return cls, None
        shown = ", ".join(repr(c) for c in classes[:20])
        return None, f"{label!r} is not a class of {manifest.name} ({shown})"
    key = "value" if "value" in item else "label" if "label" in item else None
    if key is None:
        return None, "a regressor's feedback gives 'value', a finite number"
    value = item[key]
    if not _is_number(value) or not math.isfinite(value):
        return None, f"{key} must be a finite number, not {value!r}"
    return float(value), None


Kept = list[tuple[int, Label]]
"""Labels that passed the checks, each with its item's index."""


def _check(manifest: Manifest, index: int, item: Any) -> Label | Outcome:
    """The label an item gives, or why it is refused."""
    if not isinstance(item, dict):
        return Outcome(index, REFUSED, reason="an item is a JSON object")
    request_id, row = item.get("request_id"), item.get("row", 0)
    if not isinstance(request_id, str) or not 0 < len(request_id) <= MAX_ID:
        return Outcome(
            index, REFUSED, reason=f"request_id must be text of 1 to {MAX_ID} characters"
        )
    if not isinstance(row, int) or isinstance(row, bool) or row < 0:
        return Outcome(index, REFUSED, request_id, reason="row must be a whole number, 0 or more")
    extra = sorted(set(item) - {"request_id", "row", "label", "value"})
    if extra:
        return Outcome(index, REFUSED, request_id, row, f"unknown fields: {', '.join(extra)}")
    label, reason = _target(manifest, item)
    if reason is not None:
        return Outcome(index, REFUSED, request_id, row, reason)
    return Label(request_id, row, label)


def check_items(manifest: Manifest, items: list[Any]) -> tuple[Kept, list[Outcome]]:
    """Labels to store, and the outcome of every item refused already. When a request id
    and row appear twice, the later item is kept and the earlier refused."""
    labels: dict[tuple[str, int], tuple[int, Label]] = {}
    refused: list[Outcome] = []
    for index, item in enumerate(items):
        checked = _check(manifest, index, item)
        if isinstance(checked, Outcome):
            refused.append(checked)
            continue
        key = (checked.request_id, checked.row)
        if key in labels:
            why = f"item {index} labels the same request_id and row; the later label is kept"
            refused.append(Outcome(labels[key][0], REFUSED, *key, why))
        labels[key] = (index, checked)
    return list(labels.values()), refused


def join(model: str, kept: Kept, store: CaptureStore, now: float) -> list[Outcome]:
    """Store the labels whose prediction was captured; the outcome of every kept item."""
    keys = [(label.request_id, label.row) for _, label in kept]
    known = store.known(model, keys)
    store.record_labels(model, [lab for _, lab in kept if (lab.request_id, lab.row) in known], now)
    return [
        Outcome(index, JOINED, lab.request_id, lab.row)
        if (lab.request_id, lab.row) in known
        else Outcome(
            index,
            UNKNOWN,
            lab.request_id,
            lab.row,
            "no captured prediction has this "
            "request_id and row (not captured, pruned, or not written yet)",
        )
        for index, lab in kept
    ]
