"""found_inf skips every write (set by hand and through torch.amp.GradScaler, on every device: GradScaler("cpu") on
the CPU, GradScaler("cuda") on CUDA), a scaled run equals an unscaled one, a non-finite gradient (also only in a
uni-modal objective's) skips the step and backs the scale off; and a checkpoint taken through torch.save resumes
training bit-identically."""

from __future__ import annotations

import io

import pytest
import torch

import mimo_ext
from python_tests.optim_db import OPTIMIZERS
from python_tests.optim_helpers import (
    assert_bit_identical,
    clone_model,
    make_batch,
    make_model,
    objectives,
    snapshot,
    train_step,
)

PATHS = ["objectives", "single"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one intra-op thread for tiny tensors


def feed(model, opt, step, path, scaler=None):
    """Runs the backward passes of batch ``step`` (no optimizer step)."""
    inputs, labels = make_batch(step, device=next(model.parameters()).device)
    opt.zero_grad()
    f0, fs = objectives(model, inputs, labels)
    if path == "objectives":
        opt.backward(f0, fs, grad_scaler=scaler)
    else:
        loss = mimo_ext.mimo_loss(f0, fs)
        (scaler.scale(loss) if scaler is not None else loss).backward()


# ---- found_inf


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_found_inf_set_by_hand_skips_every_write(device, name, path):
    model = make_model(device=device)
    opt = OPTIMIZERS[name].mimo(model.parameters(), diagnostics=True)
    train_step(model, opt, 0, path)  # non-zero state
    feed(model, opt, 1, path)
    before = snapshot(opt)
    opt.found_inf = torch.ones((), device=device)
    try:
        opt.step()
    finally:
        del opt.found_inf
    assert_bit_identical(before, snapshot(opt))
    # The same gradients with found_inf 0 (as GradScaler passes when nothing overflowed) do update.
    feed(model, opt, 1, path)
    opt.found_inf = torch.zeros(1, device=device)
    try:
        opt.step()
    finally:
        del opt.found_inf
    after = snapshot(opt)
    changed = [not torch.equal(a, b) for a, b in zip(before, after, strict=True)]
    assert all(changed[:1]) and sum(changed) > len(changed) // 2


# ---- GradScaler on the test's device


@pytest.mark.parametrize("unscale_first", [False, True], ids=["step", "unscale-then-step"])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_grad_scaler_run_equals_unscaled_run(device, name, path, unscale_first):
    # Power-of-two scales: scaling and unscaling are exact, so the runs agree bit for bit (diagnostics included).
    model_a = make_model(device=device)
    model_b = clone_model(model_a)
    opt_a = OPTIMIZERS[name].mimo(model_a.parameters(), diagnostics=True)
    opt_b = OPTIMIZERS[name].mimo(model_b.parameters(), diagnostics=True)
    scaler = torch.amp.GradScaler(device, init_scale=2.0**12, growth_interval=2)
    scales = []
    for step in range(5):
        train_step(model_a, opt_a, step, path)
        feed(model_b, opt_b, step, path, scaler)
        if unscale_first:
            scaler.unscale_(opt_b)
        scaler.step(opt_b)
        scaler.update()
        scales.append(scaler.get_scale())
        d_a, d_b = opt_a.last_diagnostics, opt_b.last_diagnostics
        for field in ("grad_norms", "cosines", "grad_norm"):
            torch.testing.assert_close(getattr(d_b, field), getattr(d_a, field), rtol=1e-6, atol=0)
        if path == "objectives":
            torch.testing.assert_close(d_b.weights, d_a.weights)
    assert scales[-1] > scales[0], "the scale should have grown (growth_interval=2): steps were not skipped"
    assert_bit_identical(snapshot(opt_a), snapshot(opt_b))


@pytest.mark.parametrize("cause", ["overflow", "inf-input"])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_non_finite_gradient_skips_the_step_and_backs_off(device, name, path, cause):
    model = make_model(device=device)
    opt = OPTIMIZERS[name].mimo(model.parameters())
    train_step(model, opt, 0, path)
    before = snapshot(opt)
    scaler = torch.amp.GradScaler(device, init_scale=2.0**16)
    inputs, labels = make_batch(1, device=device)
    if cause == "inf-input":
        inputs[0][0, 0] = float("inf")
    opt.zero_grad()
    f0, fs = objectives(model, inputs, labels)
    if cause == "overflow":
        big = model.fusion_head.bias.sum() * 1e36  # gradient 1e36 * 2^16 overflows float32; the value is unchanged
        f0 = f0 + (big - big.detach())
        assert torch.isfinite(f0)
    if path == "objectives":
        opt.backward(f0, fs, grad_scaler=scaler)
    else:
        scaler.scale(mimo_ext.mimo_loss(f0, fs)).backward()
    assert not all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == 2.0**15
    assert_bit_identical(before, snapshot(opt))


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_inf_only_in_a_unimodal_gradient_skips_the_step(device, name):
    # Per-objective path: f_1's gradient overflows once scaled, f0's does not; GradScaler only looks at .grad (g0),
    # yet the step must be skipped and the scale lowered.
    model = make_model(device=device)
    opt = OPTIMIZERS[name].mimo(model.parameters())
    train_step(model, opt, 0, "objectives")
    before = snapshot(opt)
    scaler = torch.amp.GradScaler(device, init_scale=2.0**16)
    inputs, labels = make_batch(1, device=device)
    opt.zero_grad()
    f0, fs = objectives(model, inputs, labels)
    big = model.uni_heads[1].bias.sum() * 1e36  # gradient 1e36 * 2^16: inf in float32; value unchanged
    fs[1] = fs[1] + (big - big.detach())
    opt.backward(f0, fs, grad_scaler=scaler)
    assert all(torch.isfinite(p.grad).all() for p in model.fusion_head.parameters())
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == 2.0**15
    assert_bit_identical(before, snapshot(opt))
    # The next, finite step goes through and leaves finite parameters.
    feed(model, opt, 2, "objectives", scaler)
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == 2.0**15
    after = snapshot(opt)
    assert not torch.equal(after[0], before[0])
    assert all(torch.isfinite(t).all() for t in after)


# ---- checkpoints


def _save(obj) -> io.BytesIO:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return buffer


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_checkpoint_resume_is_bit_identical(device, name, path):
    n_steps, m_steps = 3, 3
    reference_model = make_model(device=device)
    model = clone_model(reference_model)
    reference = OPTIMIZERS[name].mimo(reference_model.parameters())
    opt = OPTIMIZERS[name].mimo(model.parameters())
    for step in range(n_steps + m_steps):
        train_step(reference_model, reference, step, path)
    for step in range(n_steps):
        train_step(model, opt, step, path)
    model_file, opt_file = _save(model.state_dict()), _save(opt.state_dict())
    del model, opt

    resumed_model = make_model(device=device, seed=123)  # different initial values: loading must overwrite them
    resumed = OPTIMIZERS[name].mimo(resumed_model.parameters())
    resumed_model.load_state_dict(torch.load(model_file, weights_only=True))
    resumed.load_state_dict(torch.load(opt_file, weights_only=True))
    # The parameters still live in the flat buffer (each at its offset), so the step updates what the model reads.
    (bucket,) = resumed._buckets[0]
    base = bucket.param_buffer.data_ptr()
    for p, offset in zip(bucket.params, bucket.offsets, strict=True):
        assert p.data_ptr() == base + offset * p.element_size()
    for step in range(n_steps, n_steps + m_steps):
        train_step(resumed_model, resumed, step, path)
    assert_bit_identical(snapshot(reference), snapshot(resumed))
    for p_ref, p in zip(reference_model.parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(p_ref, p)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_state_dict_round_trip_keeps_step_and_hyperparameters(device, name):
    model = make_model(device=device)
    opt = OPTIMIZERS[name].mimo(model.parameters(), gamma=0.5, mu=0.3)
    for step in range(2):
        train_step(model, opt, step, "objectives", gamma=0.5, mu=0.3)
    state = torch.load(_save(opt.state_dict()), weights_only=True)
    assert state["param_groups"][0]["gamma"] == 0.5 and state["param_groups"][0]["mu"] == 0.3
    assert all(s["step"].item() == 2 for s in state["state"].values())
    other = OPTIMIZERS[name].mimo(clone_model(model).parameters())
    other.load_state_dict(state)
    assert other.param_groups[0]["gamma"] == 0.5
    assert all(s["step"].item() == 2 for s in other.state.values())
