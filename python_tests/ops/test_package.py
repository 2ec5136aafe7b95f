"""The package itself: public names, docstring examples, and the errors of a missing or mismatched build."""

from __future__ import annotations

import doctest
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import mimo_ext
import mimo_ext.masking
import mimo_ext.models
import mimo_ext.objective
import mimo_ext.ops

PUBLIC = ["DEFAULT_MU", "SmoothMax", "blend", "blend_", "masked_losses", "mimo_loss", "optim", "smooth_max"]
# The penalty schedules (mimo_ext.schedules) and their classes.
PUBLIC += ["ConstantPenalty", "IncreasingPenalty", "PenaltySchedule", "WarmupPenalty", "schedules"]


def test_public_names_are_exported():
    assert sorted(mimo_ext.__all__) == sorted(PUBLIC)
    for name in PUBLIC:
        assert getattr(mimo_ext, name) is not None


@pytest.mark.parametrize(
    "module",
    [
        mimo_ext.ops,
        mimo_ext.objective,
        mimo_ext.optim.sgd,
        mimo_ext.optim.adamw,
        mimo_ext.models,
        mimo_ext.masking,
        mimo_ext.schedules,
    ],
    ids=lambda m: m.__name__,
)
def test_docstring_examples(module):
    results = doctest.testmod(module, extraglobs={"torch": __import__("torch"), "mimo_ext": mimo_ext})
    assert results.attempted > 0 and results.failed == 0


def import_copy(tmp_path: Path, drop_library: bool = False, torch_version: str | None = None):
    """Imports a copy of the installed package in a fresh interpreter; returns (exit code, stderr)."""
    package = Path(mimo_ext.__file__).parent
    copy = tmp_path / "mimo_ext"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    if drop_library:
        for library in copy.glob("_C*.so"):
            library.unlink()
    prelude = f"import torch; torch.__version__ = {torch_version!r}; " if torch_version else ""
    result = subprocess.run(
        [sys.executable, "-c", prelude + "import mimo_ext"], cwd=tmp_path, capture_output=True, text=True
    )
    return result.returncode, result.stderr


def test_import_without_compiled_library_says_what_to_do(tmp_path):
    code, stderr = import_copy(tmp_path, drop_library=True)
    assert code != 0
    assert "compiled library (mimo_ext/_C*.so) is missing" in stderr
    assert "pip install --no-build-isolation ." in stderr


def test_import_against_another_torch_says_what_to_do(tmp_path):
    code, stderr = import_copy(tmp_path, torch_version="0.0.1")
    assert code != 0
    assert "but torch 0.0.1 is installed" in stderr
    assert "pip install --no-build-isolation ." in stderr
