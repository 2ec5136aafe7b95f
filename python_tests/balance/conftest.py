"""Fixtures of the balance harness's tests (compare, sweep, the command line): a few real rows, and a guard that
fails a test when a model is built, for inputs that must be refused before any training."""

from __future__ import annotations

import importlib

import pytest
import torch

from mimo_ext.datasets import load_mfeat

_compare_module = importlib.import_module("mimo_ext.balance.compare")


@pytest.fixture(scope="module")
def few_rows():
    xs, y = load_mfeat(("pix", "fou"))
    keep = torch.arange(0, 2000, 40)  # 50 rows, 5 per class
    return [x[keep] for x in xs], y[keep]


@pytest.fixture
def no_training(monkeypatch):
    """Makes building a model fail the test: a bad input must be refused before any training."""

    def trained(*args, **kwargs):
        raise AssertionError("a model was built: the input was not checked before training")

    monkeypatch.setattr(_compare_module, "late_fusion_for", trained)
