"""Checks of a data set folder, shared by the recipes: every problem is a :class:`LayoutError` that names the path and
what is missing or malformed, raised while the recipe indexes the folder, before any training."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

__all__ = ["LayoutError", "frame_files", "read_rows", "require_dir", "require_file"]

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")


class LayoutError(ValueError):
    """A data set folder that does not match the layout its recipe reads."""


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise LayoutError(f"{path}: {what} is missing (expected a folder)")
    return path


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise LayoutError(f"{path}: {what} is missing (expected a file)")
    return path


def read_rows(path: Path, what: str, min_fields: int) -> list[tuple[int, list[str]]]:
    """The non-empty rows of a split file, as ``(line number, fields)``. Fields are comma-separated, or separated by
    white space when a line has no comma (both forms occur in the public split files). A UTF-8 byte-order mark, which
    some of them carry, is ignored."""
    require_file(path, what)
    rows = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        for number, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            fields = next(csv.reader([line])) if "," in line else line.split()
            fields = [x.strip() for x in fields]
            if len(fields) < min_fields or not fields[0]:
                raise LayoutError(f"{path}, line {number}: expected at least {min_fields} fields, got {line!r}")
            rows.append((number, fields))
    if not rows:
        raise LayoutError(f"{path}: {what} has no rows")
    return rows


def frame_files(folder: Path, what: str, at_least: int = 1) -> list[Path]:
    """The frame images of one clip, sorted by name (``frame_00001.jpg`` ... as the extraction scripts name them)."""
    require_dir(folder, what)
    frames = sorted(p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
    if len(frames) < at_least:
        raise LayoutError(f"{folder}: {what} has {len(frames)} frame image(s), at least {at_least} needed")
    return frames


def check_labels(path: Path, labels: Sequence[int], classes: int) -> None:
    bad = [y for y in labels if not 0 <= y < classes]
    if bad:
        raise LayoutError(f"{path}: label {bad[0]} is outside [0, {classes})")
