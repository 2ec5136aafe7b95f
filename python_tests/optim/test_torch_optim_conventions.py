"""MIMOSGD / MIMOAdamW follow torch.optim's conventions: add_param_group, zero_grad, closures, LR schedulers, tensor
hyperparameters, specific errors for bad hyperparameters and bad losses; and a step can be captured in a CUDA graph
and traced by torch.compile."""

from __future__ import annotations

import math

import pytest
import torch

import mimo_ext
from mimo_ext.optim import MIMOSGD, MIMOAdamW
from python_tests.optim_helpers import (
    assert_bit_identical,
    assert_parameters_in_flat_buffers,
    clone_model,
    linear_objective,
    make_batch,
    make_model,
    objectives,
    snapshot,
    train_step,
)
from python_tests.references import assert_within_reference_error, smooth_max_reference

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one intra-op thread for tiny tensors


def pairs(name, params_mimo, params_torch, **kw):
    """A MIMO optimizer and the torch.optim one it should behave like (single-backward path, foreach=False)."""
    if name == "sgd":
        kw = {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01} | kw
        return MIMOSGD(params_mimo, **kw), torch.optim.SGD(params_torch, foreach=False, **kw)
    kw = {"lr": 0.01, "weight_decay": 0.05} | kw
    return MIMOAdamW(params_mimo, **kw), torch.optim.AdamW(params_torch, foreach=False, **kw)


def mimo_backward(model, step):
    inputs, labels = make_batch(step, device=next(model.parameters()).device)
    f0, fs = objectives(model, inputs, labels)
    loss = mimo_ext.mimo_loss(f0, fs)
    loss.backward()
    return loss


def assert_models_close(model_a, model_b):
    for p_a, p_b in zip(model_a.parameters(), model_b.parameters(), strict=True):
        torch.testing.assert_close(p_a, p_b)


# ---- add_param_group


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_add_param_group_flattens_the_new_group_and_steps_as_torch_optim(device, name):
    model = make_model(device=device)
    twin = clone_model(model)
    opt, ref = pairs(name, list(model.encoders.parameters()), list(twin.encoders.parameters()))
    train_step(model, opt, 0, "single")
    ref.zero_grad()
    mimo_backward(twin, 0)
    ref.step()
    new = list(model.uni_heads.parameters()) + list(model.fusion_head.parameters())
    new_twin = list(twin.uni_heads.parameters()) + list(twin.fusion_head.parameters())
    opt.add_param_group({"params": new, "lr": opt.param_groups[0]["lr"] / 2})
    ref.add_param_group({"params": new_twin, "lr": ref.param_groups[0]["lr"] / 2})
    # The new parameters are flattened into a buffer of their own.
    assert len(opt._buckets) == 2 and opt._buckets[1][0].params == new
    assert len(assert_parameters_in_flat_buffers(opt)) == 2
    assert all(set(opt.state[p]) >= {"step"} for p in new)
    before = [p.detach().clone() for p in new]
    for step in range(1, 4):
        train_step(model, opt, step, "single")
        ref.zero_grad()
        mimo_backward(twin, step)
        ref.step()
        assert_models_close(model, twin)
    assert all(not torch.equal(p, b) for p, b in zip(new, before, strict=True))


def test_add_param_group_rejects_bad_groups():
    model = make_model()
    opt = MIMOSGD(model.encoders.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="parameters must be floating point"):
        opt.add_param_group({"params": [torch.zeros(3, dtype=torch.int64)]})
    with pytest.raises(ValueError, match="lr must be a finite number >= 0"):
        opt.add_param_group({"params": list(model.uni_heads.parameters()), "lr": -1.0})
    assert len(opt.param_groups) == 1 and len(opt._buckets) == 1
    # The rejected group's parameters can still be added correctly.
    opt.add_param_group({"params": list(model.uni_heads.parameters()), "lr": 0.2})
    assert len(opt.param_groups) == 2


# ---- zero_grad


@pytest.mark.parametrize("set_to_none", [True, False])
@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_zero_grad_as_torch_optim(device, name, set_to_none):
    model = make_model(device=device)
    twin = clone_model(model)
    opt, ref = pairs(name, model.parameters(), twin.parameters())
    for step in range(3):
        opt.zero_grad(set_to_none=set_to_none)
        ref.zero_grad(set_to_none=set_to_none)
        for p in model.parameters():
            assert p.grad is None or torch.equal(p.grad, torch.zeros_like(p))
        mimo_backward(model, step)
        mimo_backward(twin, step)
        opt.step()
        ref.step()
        assert_models_close(model, twin)
        for p, q in zip(model.parameters(), twin.parameters(), strict=True):
            torch.testing.assert_close(p.grad, q.grad)
    # Without zero_grad, a second backward accumulates (as in torch.optim).
    opt.zero_grad(set_to_none=set_to_none)
    ref.zero_grad(set_to_none=set_to_none)
    for step in (5, 6):
        mimo_backward(model, step)
        mimo_backward(twin, step)
    opt.step()
    ref.step()
    assert_models_close(model, twin)


def test_zero_grad_of_a_gradient_set_by_hand(device):
    p = torch.nn.Parameter(torch.ones(5, device=device))
    opt = MIMOSGD([p], lr=0.1)
    grad = torch.full((5,), 2.0, device=device)
    p.grad = grad
    opt.zero_grad(set_to_none=False)
    assert p.grad is grad and torch.equal(grad, torch.zeros(5, device=device))
    p.grad = torch.ones(5, device=device)
    opt.zero_grad(set_to_none=True)
    assert p.grad is None
    opt.step()
    assert torch.equal(p, torch.ones(5, device=device))


# ---- closure


@pytest.mark.parametrize("path", ["objectives", "single"])
@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_closure_runs_once_with_gradients_and_its_loss_is_returned(device, name, path):
    model = make_model(device=device)
    twin = clone_model(model)
    opt = (MIMOSGD if name == "sgd" else MIMOAdamW)(model.parameters(), lr=0.05)
    calls = []

    def closure():
        calls.append(torch.is_grad_enabled())
        opt.zero_grad()
        inputs, labels = make_batch(0, device=device)
        f0, fs = objectives(model, inputs, labels)
        if path == "objectives":
            opt.backward(f0, fs)
            return f0
        loss = mimo_ext.mimo_loss(f0, fs)
        loss.backward()
        return loss

    inputs, labels = make_batch(0, device=device)
    with torch.no_grad():
        f0, fs = objectives(twin, inputs, labels)
        expected = f0 if path == "objectives" else mimo_ext.mimo_loss(f0, fs)
    loss = opt.step(closure)
    assert calls == [True], "the closure runs once, with gradients enabled"
    torch.testing.assert_close(loss.detach(), expected)
    twin_opt = (MIMOSGD if name == "sgd" else MIMOAdamW)(twin.parameters(), lr=0.05)
    train_step(twin, twin_opt, 0, path)
    assert_models_close(model, twin)


# ---- LR scheduler, tensor hyperparameters


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_lr_scheduler_as_with_torch_optim(device, name):
    model = make_model(device=device)
    twin = clone_model(model)
    opt, ref = pairs(name, model.parameters(), twin.parameters())
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.1)
    ref_scheduler = torch.optim.lr_scheduler.StepLR(ref, step_size=2, gamma=0.1)
    lr0 = opt.param_groups[0]["lr"]
    for step in range(6):
        train_step(model, opt, step, "single")
        ref.zero_grad()
        mimo_backward(twin, step)
        ref.step()
        scheduler.step()
        ref_scheduler.step()
        assert_models_close(model, twin)
    assert opt.param_groups[0]["lr"] == pytest.approx(lr0 * 1e-3)


def test_lr_scheduler_changes_the_update(device):
    # The same run with and without the scheduler differs once the lr has changed.
    runs = []
    for use_scheduler in (False, True):
        model = make_model(device=device)
        opt = MIMOSGD(model.parameters(), lr=0.1)
        scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5) if use_scheduler else None
        for step in range(3):
            train_step(model, opt, step, "single")
            if scheduler is not None:
                scheduler.step()
        runs.append([p.detach().clone() for p in model.parameters()])
    assert not all(torch.equal(a, b) for a, b in zip(*runs, strict=True))


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_tensor_hyperparameters_equal_floats(device, name):
    cls = MIMOSGD if name == "sgd" else MIMOAdamW
    model_a = make_model(device=device)
    model_b = clone_model(model_a)
    opt_a = cls(model_a.parameters(), lr=0.05, gamma=0.7, mu=0.2)
    t = {k: torch.tensor(v, device=device) for k, v in {"lr": 0.05, "gamma": 0.7, "mu": 0.2}.items()}
    opt_b = cls(model_b.parameters(), **t)
    for step in range(3):
        train_step(model_a, opt_a, step, "objectives", gamma=0.7, mu=0.2)
        train_step(model_b, opt_b, step, "objectives", gamma=0.7, mu=0.2)
        assert_models_close(model_a, model_b)
    # Changing the tensor lr in place changes the next update, as changing the float does.
    t["lr"].fill_(0.5)
    opt_a.param_groups[0]["lr"] = 0.5
    train_step(model_a, opt_a, 3, "single")
    train_step(model_b, opt_b, 3, "single")
    assert_models_close(model_a, model_b)


def test_gamma_zero_in_a_group_leaves_its_unimodal_heads_unchanged(device):
    # gamma = 0 in the heads' group: its uni-modal heads (reached only by the f_m) get no gradient at all.
    model = make_model(device=device)
    heads = list(model.uni_heads.parameters())
    rest = list(model.encoders.parameters()) + list(model.fusion_head.parameters())
    opt = MIMOSGD([{"params": rest}, {"params": heads, "gamma": 0.0}], lr=0.1, gamma=1.0)
    before = [p.detach().clone() for p in heads]
    rest_before = [p.detach().clone() for p in rest]
    train_step(model, opt, 0, "objectives")
    assert_bit_identical(before, [p.detach() for p in heads])
    assert all(not torch.equal(p, b) for p, b in zip(rest, rest_before, strict=True))


# ---- bad hyperparameters and losses

BAD_HYPERPARAMETERS = [
    ("sgd-lr-negative", MIMOSGD, {"lr": -0.1}, "lr must be a finite number >= 0", "Invalid learning rate: -0.1"),
    ("sgd-lr-nan", MIMOSGD, {"lr": math.nan}, "lr must be a finite number >= 0"),
    ("sgd-lr-inf", MIMOSGD, {"lr": math.inf}, "lr must be a finite number >= 0"),
    ("sgd-lr-bool", MIMOSGD, {"lr": True}, "lr must be a finite number >= 0"),
    ("sgd-lr-vector", MIMOSGD, {"lr": torch.tensor([0.1, 0.2])}, "lr must be a float or a one-element floating",
     "Tensor lr must be 1-element"),
    ("sgd-lr-int-tensor", MIMOSGD, {"lr": torch.tensor(1)}, "lr must be a float or a one-element floating"),
    ("sgd-lr-negative-tensor", MIMOSGD, {"lr": torch.tensor(-1.0)}, "lr must be a finite number >= 0",
     "Invalid learning rate"),
    ("sgd-momentum-negative", MIMOSGD, {"momentum": -0.5}, "momentum must be a finite number >= 0",
     "Invalid momentum value: -0.5"),
    ("sgd-momentum-nan", MIMOSGD, {"momentum": math.nan}, "momentum must be a finite number >= 0"),
    ("sgd-momentum-tensor", MIMOSGD, {"momentum": torch.tensor(0.9)}, "momentum must be a float"),
    ("sgd-weight_decay-negative", MIMOSGD, {"weight_decay": -1e-4}, "weight_decay must be a finite number >= 0",
     "Invalid weight_decay value"),
    ("sgd-dampening-nan", MIMOSGD, {"dampening": math.nan}, "dampening must be a finite number"),
    ("sgd-nesterov-no-momentum", MIMOSGD, {"nesterov": True}, "nesterov momentum requires momentum > 0",
     "Nesterov momentum requires a momentum and zero dampening"),
    ("sgd-nesterov-dampening", MIMOSGD, {"nesterov": True, "momentum": 0.9, "dampening": 0.1}, "dampening == 0",
     "Nesterov momentum requires a momentum and zero dampening"),
    ("sgd-mu-zero", MIMOSGD, {"mu": 0.0}, "mu must be a finite number > 0"),
    ("sgd-mu-negative", MIMOSGD, {"mu": -1.0}, "mu must be a finite number > 0"),
    ("sgd-mu-nan", MIMOSGD, {"mu": math.nan}, "mu must be a finite number > 0"),
    ("sgd-mu-zero-tensor", MIMOSGD, {"mu": torch.tensor(0.0)}, "mu must be a finite number > 0"),
    ("sgd-gamma-negative", MIMOSGD, {"gamma": -1.0}, "gamma must be a finite number >= 0"),
    ("sgd-gamma-nan", MIMOSGD, {"gamma": math.nan}, "gamma must be a finite number >= 0"),
    ("adamw-lr-negative", MIMOAdamW, {"lr": -1e-3}, "lr must be a finite number >= 0", "Invalid learning rate"),
    ("adamw-beta1-one", MIMOAdamW, {"betas": (1.0, 0.999)}, r"betas\[0\] must be in \[0, 1\)",
     "Invalid beta parameter at index 0: 1.0"),
    ("adamw-beta1-nan", MIMOAdamW, {"betas": (math.nan, 0.999)}, r"betas\[0\] must be in \[0, 1\)",
     "Invalid beta parameter at index 0: nan"),
    ("adamw-beta2-negative", MIMOAdamW, {"betas": (0.9, -0.1)}, r"betas\[1\] must be in \[0, 1\)",
     "Invalid beta parameter at index 1: -0.1"),
    ("adamw-beta2-above-one", MIMOAdamW, {"betas": (0.9, 1.5)}, r"betas\[1\] must be in \[0, 1\)",
     "Invalid beta parameter at index 1: 1.5"),
    ("adamw-betas-single", MIMOAdamW, {"betas": (0.9,)}, "betas must be a pair of floats"),
    ("adamw-eps-negative", MIMOAdamW, {"eps": -1e-8}, "eps must be a finite number >= 0", "Invalid epsilon value"),
    ("adamw-eps-nan", MIMOAdamW, {"eps": math.nan}, "eps must be a finite number >= 0", "Invalid epsilon value: nan"),
    ("adamw-weight_decay-negative", MIMOAdamW, {"weight_decay": -0.01}, "weight_decay must be a finite number >= 0",
     "Invalid weight_decay value"),
    ("adamw-mu-zero", MIMOAdamW, {"mu": 0.0}, "mu must be a finite number > 0"),
    ("adamw-gamma-negative", MIMOAdamW, {"gamma": -0.5}, "gamma must be a finite number >= 0"),
    ("adamw-gamma-inf", MIMOAdamW, {"gamma": math.inf}, "gamma must be a finite number >= 0"),
]


@pytest.mark.parametrize(
    "cls, kwargs, match, torch_match",
    [pytest.param(*case[1:4], case[4] if len(case) > 4 else None, id=case[0]) for case in BAD_HYPERPARAMETERS],
)
@pytest.mark.parametrize("where", ["defaults", "param-group"])
def test_bad_hyperparameters_raise_at_construction(cls, kwargs, match, torch_match, where):
    """A param group's values get our checks; the constructor's arguments first get torch.optim's constructor checks,
    with its messages (``torch_match``, where torch.optim refuses the value; test_optim_info_rows.py compares them)."""
    if where == "defaults" and torch_match is not None:
        match = torch_match
    p = torch.nn.Parameter(torch.ones(3))
    before = p.detach().clone()
    with pytest.raises(ValueError, match=match):
        if where == "defaults":
            cls([p], **kwargs)
        else:
            cls([{"params": [p], **kwargs}])
    assert torch.equal(p, before)


BAD_LOSSES = [
    ("f0-vector", lambda f0, fs: (f0.reshape(1), fs), ValueError, "f0 must be a 0-dim tensor"),
    ("f0-float", lambda f0, fs: (1.0, fs), ValueError, "f0 must be a 0-dim tensor"),
    ("uni-empty", lambda f0, fs: (f0, []), ValueError, "uni_losses must hold at least one loss"),
    ("uni-empty-tensor", lambda f0, fs: (f0, torch.zeros(0)), ValueError, "uni_losses must hold at least one loss"),
    ("uni-vector", lambda f0, fs: (f0, [fs[0], fs[1].reshape(1)]), ValueError, r"uni_losses\[1\] must be a 0-dim"),
    ("uni-2d", lambda f0, fs: (f0, torch.stack(fs).reshape(1, 2)), ValueError, "uni_losses must be a sequence"),
    ("uni-float", lambda f0, fs: (f0, 1.0), TypeError, "uni_losses must be a sequence"),
    ("uni-16", lambda f0, fs: (f0, fs * 8), ValueError, "at most 15 uni-modal losses"),
]


@pytest.mark.parametrize("build, error, match", [pytest.param(*case[1:], id=case[0]) for case in BAD_LOSSES])
def test_backward_rejects_bad_losses(build, error, match):
    model = make_model()
    opt = MIMOAdamW(model.parameters())
    train_step(model, opt, 0, "single")
    before = snapshot(opt)
    grads = [p.grad.clone() for p in model.parameters()]
    inputs, labels = make_batch(1)
    f0, fs = objectives(model, inputs, labels)
    with pytest.raises(error, match=match):
        opt.backward(*build(f0, fs))
    # Nothing was run: the gradients are those of the last backward, and a step after the error is that step's.
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads, strict=True))
    assert_bit_identical(before, snapshot(opt))


# ---- CUDA graphs and torch.compile


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_cuda_graph_capture_of_step_matches_eager(cuda_device, name):
    device = cuda_device
    cls = MIMOSGD if name == "sgd" else MIMOAdamW
    kw = {"momentum": 0.9, "weight_decay": 0.01} if name == "sgd" else {"weight_decay": 0.05, "amsgrad": True}
    model_g = make_model(device=device)
    model_e = clone_model(model_g)
    lr = torch.tensor(0.01, device=device)
    opt_g = cls(model_g.parameters(), lr=lr, **kw)
    opt_e = cls(model_e.parameters(), lr=0.01, **kw)

    def set_grads(model, step):
        generator = torch.Generator().manual_seed(step)
        for p in model.parameters():
            g = torch.randn(p.shape, generator=generator).to(device)
            if p.grad is None:
                p.grad = g
            else:
                p.grad.copy_(g)  # in place: the captured step reads these buffers

    # Warm up on a side stream (the first step also makes .grad views of the flat gradient buffer).
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for step in range(2):
            set_grads(model_g, step)
            opt_g.step()
    torch.cuda.current_stream().wait_stream(side)
    for step in range(2):
        set_grads(model_e, step)
        opt_e.step()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt_g.step()
    for step in range(2, 6):
        if step == 4:  # a new lr, through the captured tensor
            lr.fill_(0.003)
            opt_e.param_groups[0]["lr"] = 0.003
        set_grads(model_g, step)
        graph.replay()
        set_grads(model_e, step)
        opt_e.step()
    torch.cuda.synchronize()
    assert_bit_identical(snapshot(opt_e), snapshot(opt_g))
    assert opt_g.state[next(model_g.parameters())]["step"].item() == 6


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_cuda_graph_capture_of_a_per_objective_training_step(cuda_device, name):
    # The whole per-objective step in one graph: zero_grad, the K = 3 backward passes (opt.backward), and opt.step()
    # with lr, gamma and mu as device tensors and diagnostics on (the MIMO weights come from smooth_max on the
    # device, the coefficients and the blend inside the fused step). The objectives are linear, with prescribed
    # gradients and loss values held in static tensors; each replay gets new ones, and an eager twin fed the same
    # values must end bit-identical (parameters, state, step count, diagnostics) after every replay.
    device = cuda_device
    cls = MIMOSGD if name == "sgd" else MIMOAdamW
    kw = {"momentum": 0.9, "weight_decay": 0.01} if name == "sgd" else {"weight_decay": 0.05, "amsgrad": True}
    shapes = [(7, 5), (7,), (3, 7), (3,)]
    init = [
        torch.randn(s, generator=torch.Generator().manual_seed(i), dtype=torch.float64) for i, s in enumerate(shapes)
    ]

    def build():
        params = [torch.nn.Parameter(p.float().to(device)) for p in init]
        hyper = {
            "lr": torch.tensor(0.01, device=device),
            "gamma": torch.tensor(0.8, device=device),
            "mu": torch.tensor(0.3, device=device),
        }
        return params, hyper, cls(params, diagnostics=True, **hyper, **kw)

    params_g, hyper_g, opt_g = build()
    params_e, hyper_e, opt_e = build()
    k = 3
    static_grads = [[torch.zeros(s, device=device) for s in shapes] for _ in range(k)]
    static_losses = torch.zeros(k, device=device)  # [1, f_1, f_2]: the value of each objective

    def data(step):
        generator = torch.Generator().manual_seed(1000 + step)
        grads = [[torch.randn(s, generator=generator).to(device) for s in shapes] for _ in range(k)]
        losses = torch.cat([torch.ones(1), 0.2 + 2 * torch.rand(k - 1, generator=generator)]).to(device)
        return grads, losses

    def training_step(opt, params, grads, losses):
        opt.zero_grad()
        f = [linear_objective(params, grads[j], losses[j]) for j in range(k)]
        opt.backward(f[0], f[1:])
        opt.step()
        d = opt.last_diagnostics
        return [d.weights, d.grad_norms, d.cosines, d.grad_norm]

    def load(step):
        grads, losses = data(step)
        for static, new in zip(static_grads, grads, strict=True):
            for a, b in zip(static, new, strict=True):
                a.copy_(b)
        static_losses.copy_(losses)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for step in range(3):
            load(step)
            training_step(opt_g, params_g, static_grads, static_losses)
    torch.cuda.current_stream().wait_stream(side)
    for step in range(3):
        training_step(opt_e, params_e, *data(step))
    torch.cuda.synchronize()
    assert_bit_identical(snapshot(opt_e), snapshot(opt_g))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = training_step(opt_g, params_g, static_grads, static_losses)
    for step in range(3, 8):
        if step == 5:  # new hyperparameters, through the captured tensors
            for hyper in (hyper_g, hyper_e):
                hyper["lr"].fill_(0.003)
                hyper["gamma"].fill_(1.5)
                hyper["mu"].fill_(0.05)
        load(step)
        graph.replay()
        eager = training_step(opt_e, params_e, *data(step))
        torch.cuda.synchronize()
        assert_bit_identical(snapshot(opt_e), snapshot(opt_g))
        assert_bit_identical(eager, captured)
        _, expected_weights = smooth_max_reference(static_losses[1:], hyper_g["mu"].item())
        assert_within_reference_error(captured[0], expected_weights, scale=1.0, terms=8 + k - 1)
    assert opt_g.state[params_g[0]]["step"].item() == 8


# The per-objective path (opt.backward) inside a compiled step is refused with a ValueError that names the single
# backward as the way (optim/test_drop_in_replacement.py): its repeated backward through a compiled region was
# silently wrong once the batch size changed.
@pytest.mark.parametrize("name, path", [("sgd", "single"), ("adamw", "single")])
def test_torch_compile_of_a_training_step(name, path):
    torch._dynamo.reset()
    graphs = []
    aot_eager = torch._dynamo.lookup_backend("aot_eager")

    def backend(gm, example_inputs):
        graphs.append(str(gm.graph))
        return aot_eager(gm, example_inputs)

    cls = MIMOSGD if name == "sgd" else MIMOAdamW
    model_e = make_model()
    model_c = clone_model(model_e)
    opt_e, opt_c = cls(model_e.parameters(), lr=0.05), cls(model_c.parameters(), lr=0.05)

    def training_step(model, opt, inputs, labels):
        opt.zero_grad()
        f0, fs = objectives(model, inputs, labels)
        if path == "objectives":
            opt.backward(f0, fs)
        else:
            mimo_ext.mimo_loss(f0, fs).backward()
        opt.step()
        return f0.detach()

    compiled = torch.compile(training_step, backend=backend)
    for step in range(3):
        inputs, labels = make_batch(step)
        loss_e = training_step(model_e, opt_e, inputs, labels)
        loss_c = compiled(model_c, opt_c, inputs, labels)
        torch.testing.assert_close(loss_c, loss_e)
        assert_models_close(model_c, model_e)
    op = "sgd_step_" if name == "sgd" else "adamw_step_"
    assert any(op in g for g in graphs), "opt.step() was not traced into any graph"
    for p_c, p_e in zip(model_c.parameters(), model_e.parameters(), strict=True):
        for key in opt_e.state[p_e]:
            torch.testing.assert_close(opt_c.state[p_c][key], opt_e.state[p_e][key])


@pytest.mark.parametrize("path", ["single", "objectives"])
@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_compiled_step_is_one_graph_without_breaks(name, path):
    """torch.compile(opt.step) on either gradient path: Dynamo traces the whole step into one graph (no graph
    break), the fused op inside it, and the compiled step moves the parameters as the eager one does."""
    torch._dynamo.reset()
    cls = MIMOSGD if name == "sgd" else MIMOAdamW
    model_e = make_model()
    models = [model_e, clone_model(model_e), clone_model(model_e)]  # eager, compiled, explained (explain steps too)
    inputs, labels = make_batch(0)
    opts = []
    for model in models:
        opt = cls(model.parameters(), lr=0.05)
        f0, fs = objectives(model, inputs, labels)
        if path == "objectives":
            opt.backward(f0, fs)
        else:
            mimo_ext.mimo_loss(f0, fs).backward()
        opts.append(opt)
    explanation = torch._dynamo.explain(opts[2].step)()
    assert explanation.graph_break_count == 0, [b.reason for b in explanation.break_reasons]
    assert explanation.graph_count == 1
    op = "sgd_step_" if name == "sgd" else "adamw_step_"
    assert op in explanation.graphs[0].code
    torch._dynamo.reset()
    opts[0].step()
    torch.compile(opts[1].step, backend="aot_eager")()
    assert_models_close(models[1], model_e)
