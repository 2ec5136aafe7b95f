"""Each example of docs/integrations.md runs as it stands, in order, against the real Lightning and Hugging Face
Trainer (CPU, tiny models made here, no downloads): every training example takes its steps (Lightning: 2 epochs of
4 batches; the Trainer: max_steps=6) and leaves finite parameters."""

from __future__ import annotations

import pytest
import torch

from python_tests.integrations.docs_examples import blocks

pytest.importorskip("lightning")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")

BLOCKS = blocks()
NAMESPACE: dict = {"__name__": "docs_integrations"}


def test_the_page_has_its_examples():
    assert len(BLOCKS) == 5  # the model and data, Lightning x2, the Trainer x2: none silently lost


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_example_runs_as_written(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything a framework writes lands here
    previous = NAMESPACE.get("trainer")
    exec(compile(BLOCKS[index], f"docs/integrations.md block {index}", "exec"), NAMESPACE)
    trainer = NAMESPACE.get("trainer")
    if trainer is None or trainer is previous:
        return  # a block that trains nothing
    if hasattr(trainer, "lightning_module"):
        model, steps, expected = trainer.lightning_module, trainer.global_step, 8
    else:
        model, steps, expected = trainer.model, trainer.state.global_step, 6
    assert steps == expected
    assert all(torch.isfinite(p).all() for p in model.parameters())
