"""Code from the README, so the examples it shows are run by the test suite."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def python_block(heading: str) -> str:
    """The first ```python block after the heading that contains ``heading``."""
    text = README.read_text(encoding="utf-8")
    start = next(
        (m.end() for m in re.finditer(r"^#+ .*$", text, re.M) if heading in m.group(0)), None
    )
    if start is None:
        raise LookupError(f"no README heading contains {heading!r}")
    block = re.search(r"^```python\n(.*?)^```", text[start:], re.M | re.S)
    if block is None:
        raise LookupError(f"no python block after the README heading {heading!r}")
    return block.group(1)
