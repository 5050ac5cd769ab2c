"""The documentation names the settings that exist, and every one of them."""

from __future__ import annotations

import re
from pathlib import Path

from serving.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
OPERATIONS = ROOT / "docs" / "operations.md"
DOCS = [ROOT / "README.md", OPERATIONS, ROOT / "docs" / "design.md"]


def _variables() -> set[str]:
    return {f"SERVEWELL_{name.upper()}" for name in Settings.model_fields}


def test_operations_lists_every_setting() -> None:
    text = OPERATIONS.read_text(encoding="utf-8")
    missing = sorted(v for v in _variables() if f"| `{v}` |" not in text)
    assert not missing, f"docs/operations.md has no settings row for {missing}"


def test_docs_name_only_real_settings() -> None:
    known = _variables()
    for doc in DOCS:
        named = set(re.findall(r"SERVEWELL_[A-Z0-9_]*[A-Z0-9]", doc.read_text(encoding="utf-8")))
        unknown = sorted(named - known)
        assert not unknown, f"{doc.relative_to(ROOT)} names settings that do not exist: {unknown}"
