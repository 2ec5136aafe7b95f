"""Lightning with the MIMO optimizers: bf16-mixed with gradient_clip_val (MIMOCallback) trains as torch.optim.AdamW,
and the per-objective path in manual optimization (through Lightning's optimizer wrapper) is the documented loop;
each resumes from a checkpoint bit-identically to an uninterrupted run; and the callback's switch keeps a plain
torch.amp.GradScaler user's results (the fused unscale in the step) unchanged."""

from __future__ import annotations

import copy

import pytest
import torch

pl = pytest.importorskip("lightning.pytorch")

from mimo_ext.integrations.lightning import MIMOCallback  # noqa: E402
from mimo_ext.optim import MIMOAdamW  # noqa: E402

EPOCHS, RESUME_AFTER = 4, 2


def fit(docs, module_cls, root, *, seed, ckpt_path=None, clip=None, checkpoints=False):
    torch.manual_seed(seed)
    module = module_cls()
    callbacks = [MIMOCallback()]
    if checkpoints:
        callbacks.append(pl.callbacks.ModelCheckpoint(dirpath=root, save_top_k=-1, every_n_epochs=1))
    trainer = pl.Trainer(
        max_epochs=EPOCHS, precision="bf16-mixed", gradient_clip_val=clip, callbacks=callbacks, accelerator="cpu",
        logger=False, enable_checkpointing=checkpoints, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=root,
    )
    loader = torch.utils.data.DataLoader(docs["data"], batch_size=16)
    trainer.fit(module, loader, ckpt_path=ckpt_path)
    return trainer, module


def assert_bit_identical(a, b):
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("case", ["bf16-mixed-clipping", "per-objective"])
def test_resume_from_checkpoint_is_bit_identical(docs, tmp_path, case):
    module_cls = docs["LitFusion"] if case == "bf16-mixed-clipping" else docs["LitPerObjective"]
    # A small clip value, so that clipping acts on every step (the norms of these gradients are around 1).
    clip = 0.05 if case == "bf16-mixed-clipping" else None
    trainer, whole = fit(docs, module_cls, tmp_path / "a", seed=0, clip=clip, checkpoints=True)
    assert trainer.optimizers[0]._step_supports_amp_scaling is False  # the callback's switch
    ckpt = next((tmp_path / "a").glob(f"epoch={RESUME_AFTER - 1}-*.ckpt"))
    # Another initialisation: everything must come from the checkpoint.
    _, resumed = fit(docs, module_cls, tmp_path / "b", seed=1, clip=clip, ckpt_path=ckpt)
    assert_bit_identical(whole, resumed)


def test_mixed_precision_clipping_is_refused_without_the_callback(docs, tmp_path):
    """Why the callback exists: Lightning's check of `_step_supports_amp_scaling` (also under bf16)."""
    torch.manual_seed(0)
    trainer = pl.Trainer(
        max_steps=1, precision="bf16-mixed", gradient_clip_val=1.0, accelerator="cpu", logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )
    with pytest.raises(RuntimeError, match="does not allow for gradient clipping"):
        trainer.fit(docs["LitFusion"](), torch.utils.data.DataLoader(docs["data"], batch_size=16))


def test_mixed_precision_clipping_steps_as_torch_adamw(docs):
    """bf16-mixed with gradient_clip_val: MIMOAdamW (with the callback) trains as torch.optim.AdamW does."""
    import mimo_ext

    class Module(pl.LightningModule):
        def __init__(self, make_optimizer):
            super().__init__()
            torch.manual_seed(0)
            self.net, self.make_optimizer = docs["TwoModalities"](), make_optimizer

        def training_step(self, batch, batch_idx):
            f0, f = self.net.losses(*batch)
            return mimo_ext.mimo_loss(f0, f, gamma=1.0, mu=0.1)

        def configure_optimizers(self):
            return self.make_optimizer(self.parameters())

    trained = []
    for make in (lambda p: MIMOAdamW(p, lr=1e-2), lambda p: torch.optim.AdamW(p, lr=1e-2, foreach=False)):
        module = Module(make)
        trainer = pl.Trainer(
            max_epochs=2, precision="bf16-mixed", gradient_clip_val=0.05, callbacks=[MIMOCallback()],
            accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(module, torch.utils.data.DataLoader(docs["data"], batch_size=16))
        trained.append(module)
    for p, q in zip(trained[0].parameters(), trained[1].parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_per_objective_step_through_lightnings_wrapper_is_the_documented_loop(docs):
    """One manual-optimization step of the documented module equals opt.backward, opt.clip_grad_norm_, opt.step."""
    torch.manual_seed(0)
    module = docs["LitPerObjective"]()
    twin = copy.deepcopy(module.net)
    trainer = pl.Trainer(
        max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, torch.utils.data.DataLoader(docs["data"], batch_size=16))
    opt = MIMOAdamW(twin.parameters(), lr=1e-2, gamma=1.0, mu=0.1)
    audio, video, labels = docs["data"].tensors
    f0, f = twin.losses(audio[:16], video[:16], labels[:16])
    opt.backward(f0, f)
    opt.clip_grad_norm_(1.0)
    opt.step()
    for (name, p), q in zip(module.net.named_parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q), name


def test_grad_scaler_results_are_the_same_with_the_switch_on_or_off():
    """A plain torch.amp user keeps the fused unscale (the switch on, GradScaler hands the step its scale); with the
    switch off (the callback's), GradScaler unscales .grad first. Both step as torch.optim.AdamW under GradScaler."""
    torch.manual_seed(0)
    models = [torch.nn.Linear(7, 5, dtype=torch.float64) for _ in range(3)]
    for m in models[1:]:
        m.load_state_dict(models[0].state_dict())
    fused_unscale = MIMOAdamW(models[0].parameters(), lr=0.01)
    unscaled_first = MIMOAdamW(models[1].parameters(), lr=0.01)
    unscaled_first._step_supports_amp_scaling = False
    reference = torch.optim.AdamW(models[2].parameters(), lr=0.01, foreach=False)
    assert fused_unscale._step_supports_amp_scaling is True
    assert copy.deepcopy(unscaled_first)._step_supports_amp_scaling is False  # copies keep the setting
    for model, opt in zip(models, (fused_unscale, unscaled_first, reference), strict=True):
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
        for i in range(4):
            x = torch.randn(3, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(i))
            opt.zero_grad()
            scaler.scale(model(x).pow(2).mean()).backward()
            if opt is not fused_unscale:
                scaler.unscale_(opt)  # as Lightning's plugin does, to clip between unscaling and the step
            scaler.step(opt)
            scaler.update()
    for p, q, r in zip(*(m.parameters() for m in models), strict=True):
        torch.testing.assert_close(p, r)
        torch.testing.assert_close(q, r)
