"""The Hugging Face Trainer with the MIMO optimizers: bf16 with max_grad_norm clipping on the Trainer's own path,
and the per-objective path through MIMOTrainer (accumulation, clipping of the blended gradient), each resumed from a
checkpoint bit-identically to an uninterrupted run; MIMOTrainer's per-objective step is the documented one; and
unwrap_optimizer reaches the optimizer through accelerate's wrapper."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from mimo_ext.integrations.transformers import MIMOTrainer  # noqa: E402
from mimo_ext.integrations.wrappers import unwrap_optimizer  # noqa: E402
from mimo_ext.optim import MIMOAdamW  # noqa: E402

OPTIMIZER = (MIMOAdamW, {"lr": 1e-2, "gamma": 1.0, "mu": 0.1})


def train(docs, out, *, per_objective, seed, resume=None, trainer_cls=None, **kwargs):
    torch.manual_seed(seed)
    model = docs["FusionModel"](docs["FusionConfig"](per_objective=per_objective))
    if trainer_cls is None:
        trainer_cls = MIMOTrainer if per_objective else docs["Trainer"]
    # A small max_grad_norm, so that clipping acts on every step.
    args = docs["arguments"](str(out), **({"max_grad_norm": 0.05} | kwargs))
    trainer = trainer_cls(model=model, args=args, train_dataset=docs["Examples"](), optimizer_cls_and_kwargs=OPTIMIZER)
    trainer.train(resume_from_checkpoint=resume)
    return trainer, model


@pytest.mark.parametrize("per_objective", [False, True], ids=["bf16-clipping", "per-objective"])
def test_resume_from_checkpoint_is_bit_identical(docs, tmp_path, per_objective):
    _, whole = train(docs, tmp_path / "a", per_objective=per_objective, seed=0, save_strategy="steps", save_steps=3)
    checkpoint = tmp_path / "a" / "checkpoint-3"
    assert (checkpoint / "optimizer.pt").exists()
    _, resumed = train(docs, tmp_path / "b", per_objective=per_objective, seed=1, resume=str(checkpoint))
    for (name, p), q in zip(whole.named_parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("max_grad_norm", [0.05, 0.0], ids=["clipped", "not-clipped"])
def test_per_objective_step_is_opt_backward_with_the_blended_clip(docs, tmp_path, max_grad_norm):
    """One Trainer step (2 micro-batches) equals the documented loop written by hand: opt.backward per micro-batch
    with f0 and the uni-modal losses' gradients halved, opt.clip_grad_norm_ (max_grad_norm > 0), opt.step; and the
    grad_norm the Trainer logs is the blended gradient's (also with max_grad_norm=0, where it only measures)."""
    trainer, model = train(
        docs, tmp_path, per_objective=True, seed=0, max_steps=1, bf16=False, lr_scheduler_type="constant",
        train_sampling_strategy="sequential", max_grad_norm=max_grad_norm, logging_steps=1,
    )
    assert isinstance(unwrap_optimizer(trainer.optimizer), MIMOAdamW)
    torch.manual_seed(0)
    twin = docs["FusionModel"](docs["FusionConfig"](per_objective=True))
    # The Trainer's groups have its weight_decay (0.0 by default).
    opt = MIMOAdamW(twin.parameters(), weight_decay=0.0, **OPTIMIZER[1])
    audio, video, labels = docs["data"].tensors
    for batch in (slice(0, 16), slice(16, 32)):  # the first two micro-batches, in sequential order
        out = twin(audio[batch], video[batch], labels[batch])
        f0, uni = out["loss"], out["uni_losses"]
        opt.backward(f0 / 2, [u.detach() + (u - u.detach()) / 2 for u in uni.unbind()])
    norm = opt.clip_grad_norm_(max_grad_norm if max_grad_norm > 0 else float("inf"))
    opt.step()
    assert trainer.state.log_history[0]["grad_norm"] == pytest.approx(norm.item(), rel=1e-6)
    for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q), name


def test_without_uni_losses_mimo_trainer_is_the_trainer(docs, tmp_path):
    """A model output without uni_losses takes the Trainer's own path, bit-identically."""
    _, ours = train(docs, tmp_path / "a", per_objective=False, seed=0, trainer_cls=MIMOTrainer)
    _, theirs = train(docs, tmp_path / "b", per_objective=False, seed=0)
    for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(p, q)


def test_unwrap_optimizer_reaches_through_wrappers_and_refuses_others(docs, tmp_path):
    from accelerate.optimizer import AcceleratedOptimizer

    opt = MIMOAdamW(torch.nn.Linear(2, 2).parameters())
    assert unwrap_optimizer(AcceleratedOptimizer(opt)) is opt
    assert unwrap_optimizer(opt) is opt
    with pytest.raises(TypeError, match="expected a mimo_ext optimizer"):
        unwrap_optimizer(torch.optim.SGD(torch.nn.Linear(2, 2).parameters()))
