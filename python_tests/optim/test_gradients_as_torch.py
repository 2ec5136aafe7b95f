"""The gradients the optimizers read, each case side by side with torch.optim (the spec): zero_grad sets ``.grad`` to
None and backward allocates fresh gradients that step reads and never writes (a ``.grad`` the user assigned stays the
same tensor, version 0); sparse gradients (SGD steps them, AdamW refuses as torch's does); complex parameters
(stepped as their real view); an optimizer built on meta parameters, then ``to_empty``; ``model.to(dtype)`` after
building the optimizer, before and after the first step; gamma and mu on the single path (``opt.mimo_loss``)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import mimo_ext
from mimo_ext.optim import MIMOSGD, MIMOAdamW
from python_tests.optim_helpers import clone_model, make_batch, make_model, objectives

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one intra-op thread for tiny tensors

PAIRS = {
    "adamw": (MIMOAdamW, torch.optim.AdamW, dict(lr=0.01, weight_decay=0.05)),
    "sgd": (MIMOSGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, weight_decay=0.01)),
}


def pair(name, model):
    ours, theirs, kwargs = PAIRS[name]
    twin = clone_model(model)
    return ours(model.parameters(), **kwargs), twin, theirs(twin.parameters(), **kwargs)


def assert_same_parameters(a: nn.Module, b: nn.Module, **tolerance) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert p.dtype == q.dtype, name
        torch.testing.assert_close(p, q, msg=lambda m, name=name: f"{name}: {m}", **tolerance)


def mimo_step(model, opt, step: int, *, set_to_none: bool = True, dtype=torch.float32) -> None:
    inputs, labels = make_batch(step, dtype=dtype)
    opt.zero_grad(set_to_none=set_to_none)
    f0, f = objectives(model, inputs, labels)
    mimo_ext.mimo_loss(f0, f).backward()
    opt.step()


@pytest.mark.parametrize("set_to_none", [True, False])
@pytest.mark.parametrize("name", sorted(PAIRS))
def test_single_path_steps_as_torch_reading_autograds_own_gradients(name, set_to_none):
    model = make_model()
    opt, twin, ref = pair(name, model)
    for step in range(4):
        mimo_step(model, opt, step, set_to_none=set_to_none)
        mimo_step(twin, ref, step, set_to_none=set_to_none)
        assert_same_parameters(model, twin, rtol=2e-6, atol=2e-7)
        for p in model.parameters():
            # autograd's own gradient, not a view of a flat buffer
            assert p.grad is not None and p.grad._base is None
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_a_grad_the_user_assigned_is_the_same_tensor_after_step_never_written(name):
    model = make_model()
    opt, twin, ref = pair(name, model)
    grads = [torch.randn_like(p) for p in model.parameters()]
    for o, m in ((opt, model), (ref, twin)):
        for p, g in zip(m.parameters(), grads, strict=True):
            p.grad = g.clone()
    assigned = [p.grad for p in model.parameters()]
    opt.step()
    ref.step()
    for p, g, original in zip(model.parameters(), assigned, grads, strict=True):
        assert p.grad is g and g._version == 0 and torch.equal(g, original)
    for q in twin.parameters():
        assert q.grad._version == 0
    assert_same_parameters(model, twin, rtol=2e-6, atol=2e-7)


def sparse_pair(name, momentum=0.9):
    torch.manual_seed(0)
    ours_cls, theirs_cls, kwargs = PAIRS[name]
    # torch's SGD steps sparse gradients without weight decay (with it, it raises in add(sparse, dense)).
    kwargs = {**kwargs, "momentum": momentum, "weight_decay": 0.0} if name == "sgd" else kwargs
    emb = nn.Embedding(11, 3, sparse=True)
    twin = clone_model(emb)
    return emb, ours_cls(emb.parameters(), **kwargs), twin, theirs_cls(twin.parameters(), **kwargs)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sparse_gradients_sgd_steps_them_as_torch(momentum):
    emb, opt, twin, ref = sparse_pair("sgd", momentum)
    for step, rows in enumerate([[1, 2, 2, 7], [0, 7, 10], [3]]):
        for m, o in ((emb, opt), (twin, ref)):
            o.zero_grad()
            m(torch.tensor(rows)).pow(2).sum().backward()
            assert m.weight.grad.is_sparse
            o.step()
        torch.testing.assert_close(emb.weight, twin.weight, rtol=1e-6, atol=1e-7, msg=f"step {step}")


def test_sparse_gradients_adamw_refuses_as_torch_before_any_write():
    emb, opt, twin, ref = sparse_pair("adamw")
    for m, o in ((emb, opt), (twin, ref)):
        m(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        ref.step()
    before = emb.weight.detach().clone()
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        opt.step()
    assert torch.equal(emb.weight, before)


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_complex_parameters_step_as_torch_real_view(name):
    torch.manual_seed(0)
    ours_cls, theirs_cls, kwargs = PAIRS[name]
    params = [nn.Parameter(torch.randn(3, 5, dtype=torch.complex64)), nn.Parameter(torch.randn(4))]
    twins = [nn.Parameter(p.detach().clone()) for p in params]
    opt, ref = ours_cls(params, **kwargs), theirs_cls(twins, **kwargs)
    target = torch.randn(3, 5, dtype=torch.complex64)
    for _ in range(3):
        for ps, o in ((params, opt), (twins, ref)):
            o.zero_grad()
            ((ps[0] - target).abs().pow(2).sum() + ps[1].pow(2).sum()).backward()
            o.step()
        for p, q in zip(params, twins, strict=True):
            assert p.dtype == q.dtype
            torch.testing.assert_close(p, q, rtol=2e-6, atol=2e-7)
    for key, value in ref.state[twins[0]].items():
        if key != "step":
            assert opt.state[params[0]][key].dtype == value.dtype == torch.complex64
            torch.testing.assert_close(opt.state[params[0]][key], value, rtol=2e-6, atol=2e-7)


@pytest.fixture
def swap_params_on_conversion():
    """Module.to_empty keeps the Parameter objects (which the optimizer holds) only with swapping on: otherwise it
    makes new ones from meta (meta and CPU tensors cannot share .data), for torch.optim as for MIMO."""
    old = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    yield
    torch.__future__.set_swap_module_params_on_conversion(old)


@pytest.mark.usefixtures("swap_params_on_conversion")
@pytest.mark.parametrize("name", sorted(PAIRS))
def test_built_on_meta_parameters_then_to_empty_steps_as_torch(name):
    model, twin = make_model(device="meta"), make_model(device="meta")
    params = list(model.parameters())
    ours_cls, theirs_cls, kwargs = PAIRS[name]
    opt, ref = ours_cls(model.parameters(), **kwargs), theirs_cls(twin.parameters(), **kwargs)
    real = make_model(seed=3)
    for m in (model, twin):
        m.to_empty(device="cpu")
        with torch.no_grad():
            for p, r in zip(m.parameters(), real.parameters(), strict=True):
                p.copy_(r)
    assert all(p is q for p, q in zip(params, model.parameters(), strict=True))
    for step in range(3):
        mimo_step(model, opt, step)
        mimo_step(twin, ref, step)
    assert_same_parameters(model, twin, rtol=2e-6, atol=2e-7)
    assert not torch.equal(params[0], real.encoders[0][0].weight)  # it trained
    assert not any(t.is_meta for s in opt.state.values() for t in s.values() if isinstance(t, torch.Tensor))


@pytest.mark.parametrize("when", ["before-first-step", "after-first-step"])
@pytest.mark.parametrize("name", sorted(PAIRS))
def test_model_to_dtype_after_building_the_optimizer(name, when):
    """torch.optim keys its state on the Parameter objects: a dtype change before the first step just works; after
    it, torch's SGD goes on with its float32 state (AdamW raises a dtype error in its lerp). MIMO lays the moved
    parameters out again, carrying the state over in their new dtype: the same numbers as torch's SGD (to float32
    rounding of its state), and as torch's AdamW given its state converted."""
    model = make_model()
    opt, twin, ref = pair(name, model)
    if when == "after-first-step":
        mimo_step(model, opt, 0)
        mimo_step(twin, ref, 0)
    model.to(torch.float64)
    twin.to(torch.float64)
    if when == "after-first-step" and name == "adamw":
        for state in ref.state.values():  # what torch's AdamW needs to go on (it raises otherwise)
            for key in ("exp_avg", "exp_avg_sq"):
                state[key] = state[key].double()
    for step in range(1, 4):
        mimo_step(model, opt, step, dtype=torch.float64)
        mimo_step(twin, ref, step, dtype=torch.float64)
    assert_same_parameters(model, twin, rtol=1e-6, atol=1e-7)
    assert all(p.dtype == torch.float64 for p in model.parameters())


def test_model_reshaped_after_building_the_optimizer_is_refused():
    model = make_model()
    opt = MIMOAdamW(model.parameters())
    p = next(model.parameters())
    p.data = p.data.reshape(-1)
    with pytest.raises(ValueError, match="re-shaped"):
        opt.step()


# ---- gamma and mu: one source of truth on the single path


def single_path_params(gamma, use_opt_loss):
    model = make_model()
    opt = MIMOAdamW(model.parameters(), lr=0.01, gamma=gamma, mu=0.2)
    inputs, labels = make_batch(0)
    f0, f = objectives(model, inputs, labels)
    loss = opt.mimo_loss(f0, f) if use_opt_loss else mimo_ext.mimo_loss(f0, f)
    loss.backward()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()]), caught


def test_gamma_given_to_the_optimizer_but_a_plain_loss_backward_warns():
    # The repro: gamma=0 and gamma=5 on the optimizer, mimo_loss's own defaults in the loss.
    a, caught_a = single_path_params(0.0, use_opt_loss=False)
    b, _ = single_path_params(5.0, use_opt_loss=False)
    assert torch.equal(a, b)  # the optimizer cannot see the loss: its gamma is not used...
    assert any("opt.mimo_loss" in str(w.message) for w in caught_a)  # ...and it says so


def test_opt_mimo_loss_uses_the_optimizers_gamma_and_mu():
    a, caught = single_path_params(0.0, use_opt_loss=True)
    b, _ = single_path_params(5.0, use_opt_loss=True)
    assert not caught and not torch.equal(a, b)
    # gamma=5 through opt.mimo_loss is mimo_loss(gamma=5, mu=0.2) with torch's AdamW.
    model = make_model()
    ref = torch.optim.AdamW(model.parameters(), lr=0.01)
    f0, f = objectives(model, *make_batch(0))
    mimo_ext.mimo_loss(f0, f, gamma=5.0, mu=0.2).backward()
    ref.step()
    torch.testing.assert_close(b, torch.cat([p.detach().flatten() for p in model.parameters()]), rtol=2e-6, atol=2e-7)


def test_opt_mimo_loss_with_tensor_gamma_and_mu_matches_floats():
    values = []
    for as_tensor in (False, True):
        model = make_model()
        gamma, mu = (torch.tensor(0.7), torch.tensor(0.3)) if as_tensor else (0.7, 0.3)
        opt = MIMOAdamW(model.parameters(), lr=0.01, gamma=gamma, mu=mu)
        f0, f = objectives(model, *make_batch(0))
        loss = opt.mimo_loss(f0, f)
        loss.backward()
        opt.step()
        values.append((loss.detach(), torch.cat([p.detach().flatten() for p in model.parameters()])))
    torch.testing.assert_close(values[1][0], values[0][0])
    torch.testing.assert_close(values[1][1], values[0][1], rtol=1e-6, atol=1e-7)


def test_opt_mimo_loss_refuses_groups_that_disagree():
    model = make_model()
    heads = list(model.uni_heads.parameters())
    rest = [p for p in model.parameters() if all(p is not h for h in heads)]
    opt = MIMOSGD([{"params": rest}, {"params": heads, "gamma": 0.0}], lr=0.1)
    f0, f = objectives(model, *make_batch(0))
    with pytest.raises(ValueError, match=r"param_groups\[1\] has gamma=0.0"):
        opt.mimo_loss(f0, f)


def test_no_warning_without_gamma_or_mu_on_the_optimizer():
    model = make_model()
    opt = MIMOAdamW(model.parameters())
    f0, f = objectives(model, *make_batch(0))
    mimo_ext.mimo_loss(f0, f).backward()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step()


# ---- the per-objective path: autograd's own gradients too


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_per_objective_path_reads_fresh_gradients_and_steps_as_torch_on_mimo_loss(name):
    model = make_model(dtype=torch.float64)
    opt, twin, ref = pair(name, model)
    for step in range(3):
        inputs, labels = make_batch(step, dtype=torch.float64)
        opt.zero_grad()
        f0, f = objectives(model, inputs, labels)
        opt.backward(f0, f)
        # .grad is g0, autograd's own tensor; no flat gradient buffer was filled
        assert all(p.grad is None or p.grad._base is None for p in model.parameters())
        assert all(not b.grad_buffers for bs in opt._buckets for b in bs)
        opt.step()
        ref.zero_grad()
        f0, f = objectives(twin, inputs, labels)
        mimo_ext.mimo_loss(f0, f).backward()
        ref.step()
        assert_same_parameters(model, twin, rtol=1e-9, atol=1e-10)
