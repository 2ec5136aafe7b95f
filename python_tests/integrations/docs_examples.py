"""The Python examples of docs/integrations.md, in order, for the tests that run them as they stand."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "integrations.md"


def blocks() -> list[str]:
    """The ```python blocks of the page, in order."""
    return re.findall(r"^```python\n(.*?)^```$", DOC.read_text(), flags=re.M | re.S)


def run_all() -> dict:
    """A namespace in which every example ran, in order (the page's examples build on each other)."""
    namespace: dict = {"__name__": "docs_integrations"}
    for code in blocks():
        exec(compile(code, str(DOC), "exec"), namespace)
    return namespace
