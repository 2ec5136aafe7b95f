"""The bad-input matrix: one table of bad calls across the public API (the ops, mimo_loss, the
fused step operators, MIMOSGD / MIMOAdamW from construction to load_state_dict, the balancing front end). Each row
names the exception type and a pattern that names the offending argument; every call runs against a fresh World,
and everything the World holds (op buffers, parameters, gradients, flat gradient buffers, optimizer state, param
group hyperparameters, the pending per-objective losses) must be bit-identical after the rejected call.

The op-level files (ops/test_blend.py, test_smooth_max.py, test_step_ops.py) test their own bad inputs per device;
this table spans the whole API on the CPU, with the "nothing changed" check applied uniformly."""

from __future__ import annotations

import math

import pytest
import torch

import mimo_ext
from mimo_ext import ops
from mimo_ext.balance import compare
from mimo_ext.balance.methods import make_method
from mimo_ext.optim import MIMOSGD, MIMOAdamW
from python_tests.optim_helpers import bits, make_batch, make_model, objectives, snapshot, threads, train_step

META = "meta"  # a device other than the CPU that needs no GPU
N, K = 10, 2


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    with threads(1):
        yield


class World:
    """Fresh inputs for one bad call. Optimizers are built on demand (``optimizer``) and registered, so that
    ``state()`` covers them."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.base = torch.randn(N, generator=g)
        self.grads = [torch.randn(N, generator=g) for _ in range(K)]
        self.weights = torch.rand(K, generator=g)
        self.losses = torch.rand(3, 4, generator=g)
        # Fused step buffers (float32, K = 2), shared by sgd_step_ and adamw_step_.
        self.param = torch.randn(N, generator=g)
        self.momentum_buffer = torch.randn(N, generator=g)
        self.exp_avg = torch.randn(N, generator=g)
        self.exp_avg_sq = torch.rand(N, generator=g)
        self.max_exp_avg_sq = torch.rand(N, generator=g) + 1
        self.step_grads = [torch.randn(N, generator=g) for _ in range(K)]
        self.coefficients = torch.tensor([1.0, 0.5])
        self.lr = torch.tensor(0.01)
        self.step = torch.tensor(3.0)
        self.optimizers: list[tuple[torch.nn.Module, torch.optim.Optimizer]] = []

    def tensors(self) -> list[torch.Tensor]:
        own = [self.base, *self.grads, self.weights, self.losses, self.param, self.momentum_buffer, self.exp_avg]
        own += [self.exp_avg_sq, self.max_exp_avg_sq, *self.step_grads, self.coefficients, self.lr, self.step]
        for model, opt in self.optimizers:
            own += snapshot(opt)  # parameters and every state tensor, step counts included
            own += [p.grad for p in model.parameters() if p.grad is not None]
            own += [b for buckets in opt._buckets for bucket in buckets for b in bucket.grad_buffers]
        return [t.detach().clone() for t in own]

    def meta(self) -> list[str]:
        """Host-side optimizer state: hyperparameters (repr, so that NaN equals NaN) and the pending losses."""
        out = []
        for _, opt in self.optimizers:
            out += [repr({k: v for k, v in group.items() if k != "params"}) for group in opt.param_groups]
            out.append(repr(None if opt._pending is None else opt._pending.uni_losses.tolist()))
        return out

    def optimizer(self, name: str, *, groups: bool = False, pending: bool = True):
        """A late-fusion model and its optimizer after one step (non-zero state), with the next batch's
        per-objective gradients pending when ``pending``."""
        model = make_model()
        params = (
            [
                {"params": model.encoders.parameters()},
                {"params": [*model.uni_heads.parameters(), *model.fusion_head.parameters()]},
            ]
            if groups
            else model.parameters()
        )
        opt = MIMOSGD(params, lr=0.1, momentum=0.9) if name == "sgd" else MIMOAdamW(params, lr=0.01, amsgrad=True)
        train_step(model, opt, 0, "objectives")
        if pending:
            opt.zero_grad()
            opt.backward(*self.losses_of(model, 1))
        self.optimizers.append((model, opt))
        return model, opt

    @staticmethod
    def losses_of(model, step):
        inputs, labels = make_batch(step)
        return objectives(model, inputs, labels)

    def sgd(self, **changes):
        """sgd_step_ arguments, some replaced by name."""
        args = dict(
            param=self.param, momentum_buffer=self.momentum_buffer, grads=self.step_grads,
            coefficients=self.coefficients, lr=self.lr, step=self.step, grad_scale=None, found_inf=None,
            weight_decay=0.0, momentum=0.9, dampening=0.0, nesterov=False, maximize=False, compute_stats=True,
        )  # fmt: skip
        args.update(changes)
        return lambda: torch.ops.mimo_ext.sgd_step_.default(**args)

    def adamw(self, **changes):
        args = dict(
            param=self.param, exp_avg=self.exp_avg, exp_avg_sq=self.exp_avg_sq, max_exp_avg_sq=self.max_exp_avg_sq,
            grads=self.step_grads, coefficients=self.coefficients, lr=self.lr, step=self.step, grad_scale=None,
            found_inf=None, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01, amsgrad=True, maximize=False,
            compute_stats=True,
        )  # fmt: skip
        args.update(changes)
        return lambda: torch.ops.mimo_ext.adamw_step_.default(**args)


def _strided(t):
    return torch.stack([t, t], dim=1)[:, 0]


def _set_group(opt, index, **values):
    opt.param_groups[index].update(values)


def _other_state_dict(kind):
    """A state_dict that does not fit the World's optimizers (make_model's layout)."""
    if kind == "torch-adamw":
        model = make_model()
        opt = torch.optim.AdamW(model.parameters())
        train_step(model, opt, 0, "single")
        return opt.state_dict()
    if kind == "sgd":
        model = make_model()
        opt = MIMOSGD(model.parameters(), lr=0.1, momentum=0.9)
        train_step(model, opt, 0, "objectives")
        return opt.state_dict()
    # Another layout: the same number of parameters, other shapes.
    model = make_model(input_dims=(4, 5))
    opt = MIMOAdamW(model.parameters(), amsgrad=True)
    train_step(model, opt, 0, "objectives", input_dims=(4, 5))
    return opt.state_dict()


def _replace_data(model, reshape: bool):
    p = model.encoders[0].net[0].weight if hasattr(model.encoders[0], "net") else next(model.parameters())
    with torch.no_grad():
        p.data = p.data.reshape(-1) if reshape else p.data.clone()


def _backward_call(world, name, change):
    model, opt = world.optimizer(name)
    f0, fs = world.losses_of(model, 2)
    return lambda: opt.backward(*change(f0, fs))


def _step_after_setting(world, name, group, **values):
    """step() of an optimizer (two param groups) after a hyperparameter of ``group`` was changed by hand."""
    opt = world.optimizer(name, groups=True)[1]
    _set_group(opt, group, **values)
    return opt.step


def _step_after_replace(world, name):
    model, opt = world.optimizer(name)
    _replace_data(model, reshape=False)
    return opt.step


def _backward_after_reshape(world, name):
    model, opt = world.optimizer(name)
    losses = world.losses_of(model, 2)  # the forward pass, before the parameter changes
    _replace_data(model, reshape=True)
    return lambda: opt.backward(*losses)


def _load(world, name, kind):
    opt = world.optimizer(name)[1]
    if kind == "nan-lr":
        state_dict = opt.state_dict()
        state_dict["param_groups"][0]["lr"] = math.nan
    elif kind == "fewer-params":
        state_dict = opt.state_dict()
        state_dict["param_groups"][0]["params"] = state_dict["param_groups"][0]["params"][:-1]
    elif kind == "list":
        state_dict = [opt.state_dict()]
    else:
        state_dict = _other_state_dict(kind)
    return lambda: opt.load_state_dict(state_dict)


def _construct(cls, **kwargs):
    def call(world):
        params = [world.param, world.momentum_buffer]  # plain tensors: any rebinding would show in tensors()
        return lambda: cls(params, **kwargs)

    return call


NAN, INF = math.nan, math.inf

# (id, exception, pattern naming the argument, setup: World -> the bad call). setup may change the World first
# (a hyperparameter set after construction, a parameter replaced); the snapshot is taken after it.
CASES = [
    # ---- smooth_max, smooth_max_backward
    ("smooth_max-losses-int64", TypeError, "losses must be float32",
     lambda w: lambda: mimo_ext.smooth_max(w.losses.long(), 1.0)),
    ("smooth_max-losses-0dim", ValueError, "losses must have at least 1 dimension",
     lambda w: lambda: mimo_ext.smooth_max(w.losses[0, 0], 1.0)),
    ("smooth_max-losses-M0", ValueError, "losses must have M >= 1",
     lambda w: lambda: mimo_ext.smooth_max(w.losses[:, :0], 1.0)),
    ("smooth_max-mu-nan", ValueError, "mu must be finite and > 0",
     lambda w: lambda: mimo_ext.smooth_max(w.losses, NAN)),
    ("smooth_max-mu-zero", ValueError, "mu must be finite and > 0",
     lambda w: lambda: mimo_ext.smooth_max(w.losses, 0.0)),
    ("smooth_max-mu-tensor", TypeError, "mu must be a Python float",
     lambda w: lambda: mimo_ext.smooth_max(w.losses, torch.tensor(1.0))),
    ("smooth_max_backward-grad_value-shape", ValueError, "grad_value must have the shape of weights",
     lambda w: lambda: ops.smooth_max_backward(w.losses[0], w.losses)),
    # ---- blend, blend_
    ("blend-base-int", TypeError, "base must be float32",
     lambda w: lambda: mimo_ext.blend(w.base.int(), [g.int() for g in w.grads], w.weights, 1.0)),
    ("blend-base-2d", ValueError, "base must be a 1-D buffer",
     lambda w: lambda: mimo_ext.blend(w.base.view(2, 5), w.grads, w.weights, 1.0)),
    ("blend-base-non-contiguous", ValueError, "base must be contiguous",
     lambda w: lambda: mimo_ext.blend(_strided(w.base), w.grads, w.weights, 1.0)),
    ("blend-grads-meta-device", ValueError, r"grads\[1\] must be on the device of base",
     lambda w: lambda: mimo_ext.blend(w.base, [w.grads[0], w.grads[1].to(META)], w.weights, 1.0)),
    ("blend-weights-meta-device", ValueError, "weights must be on the device of base",
     lambda w: lambda: mimo_ext.blend(w.base, w.grads, w.weights.to(META), 1.0)),
    ("blend-grads-length", ValueError, r"grads\[1\] must have the length of base \(10\), got 9",
     lambda w: lambda: mimo_ext.blend(w.base, [w.grads[0], w.grads[1][:9]], w.weights, 1.0)),
    ("blend-grads-dtype", TypeError, r"grads\[0\] must have the dtype of base",
     lambda w: lambda: mimo_ext.blend(w.base, [w.grads[0].double(), w.grads[1]], w.weights, 1.0)),
    ("blend-grads-non-contiguous", ValueError, r"grads\[1\] must be contiguous",
     lambda w: lambda: mimo_ext.blend(w.base, [w.grads[0], _strided(w.grads[1])], w.weights, 1.0)),
    ("blend-grads-empty", ValueError, "grads must hold at least one buffer",
     lambda w: lambda: mimo_ext.blend(w.base, [], w.weights[:0], 1.0)),
    ("blend-grads-a-tensor", TypeError, "grads must be a sequence of tensors",
     lambda w: lambda: mimo_ext.blend(w.base, w.grads[0], w.weights, 1.0)),
    ("blend-grads-item-float", TypeError, r"grads\[1\] must be a tensor",
     lambda w: lambda: mimo_ext.blend(w.base, [w.grads[0], 1.0], w.weights, 1.0)),
    ("blend-weights-count", ValueError, r"weights must be 1-D with one entry per grads buffer \(2\)",
     lambda w: lambda: mimo_ext.blend(w.base, w.grads, w.weights[:1], 1.0)),
    ("blend-weights-int", TypeError, "weights must be a floating-point tensor",
     lambda w: lambda: mimo_ext.blend(w.base, w.grads, w.weights.long(), 1.0)),
    ("blend-gamma-nan", ValueError, "gamma must be finite",
     lambda w: lambda: mimo_ext.blend(w.base, w.grads, w.weights, NAN)),
    ("blend_-gamma-inf", ValueError, "gamma must be finite",
     lambda w: lambda: mimo_ext.blend_(w.base, w.grads, w.weights, INF)),
    ("blend-gamma-tensor", TypeError, "gamma must be a Python float",
     lambda w: lambda: mimo_ext.blend(w.base, w.grads, w.weights, torch.tensor(1.0))),
    ("blend_-grads-partially-overlap-base", ValueError, r"grads\[0\] partially overlaps base",
     lambda w: lambda: mimo_ext.blend_(w.base[:8], [w.base[1:9], w.grads[1][:8]], w.weights, 1.0)),
    ("blend-base-requires-grad", ValueError, "base requires grad",
     lambda w: lambda: mimo_ext.blend(w.base.requires_grad_(), w.grads, w.weights, 1.0)),
    ("blend-weights-requires-grad", ValueError, "weights requires grad",
     lambda w: lambda: mimo_ext.blend(w.base, w.grads, w.weights.requires_grad_(), 1.0)),
    ("blend_-leaf-requires-grad", ValueError, "base requires grad",
     lambda w: lambda: mimo_ext.blend_(w.base.requires_grad_(), w.grads, w.weights, 1.0)),
    # ---- the fused step operators
    ("sgd_step_-param-requires-grad", ValueError, "param requires grad",
     lambda w: w.sgd(param=w.param.requires_grad_())),
    ("adamw_step_-exp_avg-requires-grad", ValueError, "exp_avg requires grad",
     lambda w: w.adamw(exp_avg=w.exp_avg.requires_grad_())),
    ("sgd_step_-momentum_buffer-non-contiguous", ValueError, "momentum_buffer must be contiguous",
     lambda w: w.sgd(momentum_buffer=_strided(w.momentum_buffer))),
    ("adamw_step_-exp_avg-aliases-param", ValueError, "exp_avg overlaps param",
     lambda w: w.adamw(exp_avg=w.param)),
    ("adamw_step_-grads-overlap-exp_avg_sq", ValueError, r"grads\[1\] overlaps exp_avg_sq",
     lambda w: w.adamw(grads=[w.step_grads[0], w.exp_avg_sq])),
    ("sgd_step_-grads-view-of-param", ValueError, r"grads\[0\] overlaps param",
     lambda w: w.sgd(grads=[w.param[:N], w.step_grads[1]])),
    ("sgd_step_-lr-meta-device", ValueError, "lr must be on the device of param",
     lambda w: w.sgd(lr=w.lr.to(META))),
    ("adamw_step_-step-float64", TypeError, "step must be a float32 tensor",
     lambda w: w.adamw(step=w.step.double())),
    ("sgd_step_-17-grads", ValueError, "grads may hold at most 16 buffers",
     lambda w: w.sgd(grads=[w.step_grads[0]] * 17, coefficients=torch.ones(17))),
    ("adamw_step_-coefficients-count", ValueError, r"coefficients must be 1-D with one entry per grads buffer \(2\)",
     lambda w: w.adamw(coefficients=w.coefficients[:1])),
    ("adamw_step_-beta1-nan", ValueError, r"beta1 must be in \[0, 1\)",
     lambda w: w.adamw(beta1=NAN)),
    ("adamw_step_-eps-inf", ValueError, "eps must be finite and >= 0",
     lambda w: w.adamw(eps=INF)),
    ("sgd_step_-weight_decay-nan", ValueError, "weight_decay must be finite and >= 0",
     lambda w: w.sgd(weight_decay=NAN)),
    ("sgd_step_-dampening-inf", ValueError, "dampening must be finite",
     lambda w: w.sgd(dampening=INF)),
    # ---- mimo_loss
    ("mimo_loss-gamma-nan", ValueError, "gamma must be finite and >= 0",
     lambda w: lambda: mimo_ext.mimo_loss(w.losses[0, 0], list(w.losses[0]), gamma=NAN)),
    ("mimo_loss-mu-negative", ValueError, "mu must be finite and > 0",
     lambda w: lambda: mimo_ext.mimo_loss(w.losses[0, 0], list(w.losses[0]), mu=-1.0)),
    ("mimo_loss-f0-vector", ValueError, r"f0 must be a scalar \(0-dim\) tensor",
     lambda w: lambda: mimo_ext.mimo_loss(w.losses[0], list(w.losses[0]))),
    ("mimo_loss-uni_losses-empty", ValueError, "uni_losses must be a non-empty sequence",
     lambda w: lambda: mimo_ext.mimo_loss(w.losses[0, 0], [])),
    ("mimo_loss-uni_losses-2d", ValueError, "uni_losses must be a non-empty 1-D tensor",
     lambda w: lambda: mimo_ext.mimo_loss(w.losses[0, 0], w.losses)),
    # ---- optimizers: construction
    ("MIMOSGD-int-parameters", TypeError, "parameters must be floating point",
     lambda w: lambda: MIMOSGD([w.step.long()])),
    ("MIMOAdamW-lr-nan", ValueError, "lr must be a finite number >= 0",
     _construct(MIMOAdamW, lr=NAN)),
    ("MIMOAdamW-lr-int-tensor", ValueError, "lr must be a float or a one-element floating tensor",
     _construct(MIMOAdamW, lr=torch.tensor(1))),
    ("MIMOAdamW-betas-inf", ValueError, r"betas\[1\] must be in \[0, 1\)",
     _construct(MIMOAdamW, betas=(0.9, INF))),
    ("MIMOAdamW-eps-nan", ValueError, "eps must be a finite number >= 0",
     _construct(MIMOAdamW, eps=NAN)),
    ("MIMOSGD-momentum-negative", ValueError, "momentum must be a finite number >= 0",
     _construct(MIMOSGD, momentum=-0.5)),
    ("MIMOSGD-weight_decay-inf", ValueError, "weight_decay must be a finite number >= 0",
     _construct(MIMOSGD, weight_decay=INF)),
    ("MIMOSGD-gamma-nan", ValueError, "gamma must be a finite number >= 0",
     _construct(MIMOSGD, gamma=NAN)),
    ("MIMOAdamW-mu-zero", ValueError, "mu must be a finite number > 0",
     _construct(MIMOAdamW, mu=0.0)),
    # ---- optimizers: hyperparameters changed after construction, rejected by step() before any write
    ("MIMOAdamW-step-lr-set-to-nan", ValueError, "lr must be a finite number >= 0",
     lambda w: _step_after_setting(w, "adamw", 0, lr=NAN)),
    ("MIMOSGD-step-gamma-set-to-inf", ValueError, "gamma must be a finite number >= 0",
     lambda w: _step_after_setting(w, "sgd", 0, gamma=INF)),
    ("MIMOAdamW-step-mu-nan-in-second-group", ValueError, "mu must be a finite number > 0",
     lambda w: _step_after_setting(w, "adamw", 1, mu=NAN)),
    ("MIMOAdamW-step-beta1-nan-in-second-group", ValueError, r"betas\[0\] must be in \[0, 1\)",
     lambda w: _step_after_setting(w, "adamw", 1, betas=(NAN, 0.999))),
    ("MIMOSGD-step-weight_decay-set-to-nan", ValueError, "weight_decay must be a finite number >= 0",
     lambda w: _step_after_setting(w, "sgd", 0, weight_decay=NAN)),
    # ---- optimizers: parameters changed between steps
    ("MIMOSGD-step-parameter-replaced", ValueError, r"parameter \d+ of param_groups\[0\] .* is no longer a view",
     lambda w: _step_after_replace(w, "sgd")),
    ("MIMOAdamW-backward-parameter-reshaped", ValueError, r"parameter \d+ of param_groups\[0\] .* is no longer a view",
     lambda w: _backward_after_reshape(w, "adamw")),
    # ---- optimizers: backward's losses
    ("MIMOAdamW-backward-f0-vector", ValueError, "f0 must be a 0-dim tensor",
     lambda w: _backward_call(w, "adamw", lambda f0, fs: (f0.reshape(1), fs))),
    ("MIMOSGD-backward-uni_losses-meta", ValueError, r"uni_losses\[1\] is on meta",
     lambda w: _backward_call(w, "sgd", lambda f0, fs: (f0, [fs[0], fs[1].to(META)]))),
    ("MIMOAdamW-backward-16-uni_losses", ValueError, "at most 15 uni-modal losses",
     lambda w: _backward_call(w, "adamw", lambda f0, fs: (f0, fs * 8))),
    ("MIMOSGD-backward-uni_losses-a-float", TypeError, "uni_losses must be a sequence",
     lambda w: _backward_call(w, "sgd", lambda f0, fs: (f0, 1.0))),
    # ---- optimizers: load_state_dict
    ("MIMOAdamW-load-MIMOSGD-state_dict", ValueError, r"state_dict's param_groups\[0\] lacks the hyperparameters",
     lambda w: _load(w, "adamw", "sgd")),
    ("MIMOSGD-load-torch-AdamW-state_dict", ValueError, r"state_dict's param_groups\[0\] lacks the hyperparameters",
     lambda w: _load(w, "sgd", "torch-adamw")),
    ("MIMOAdamW-load-other-layout", ValueError, r"state 'exp_avg' of parameter 0 .* another parameter layout",
     lambda w: _load(w, "adamw", "layout")),
    ("MIMOSGD-load-fewer-params", ValueError, r"state_dict's param_groups\[0\] holds",
     lambda w: _load(w, "sgd", "fewer-params")),
    ("MIMOAdamW-load-nan-lr", ValueError, "lr must be a finite number >= 0",
     lambda w: _load(w, "adamw", "nan-lr")),
    ("MIMOSGD-load-a-list", ValueError, "state_dict must be a dict",
     lambda w: _load(w, "sgd", "list")),
    # ---- the balancing front end
    ("make_method-unknown-name", ValueError, "unknown balancing method 'mimo2'",
     lambda w: lambda: make_method("mimo2")),
    ("compare-one-modality", ValueError, "modalities must hold at least 2 modalities",
     lambda w: lambda: compare([torch.randn(8, 3)], torch.arange(8) % 2, methods=["mimo"], seeds=[0], epochs=1)),
    ("compare-unknown-method", ValueError, r"unknown method\(s\) \['mimo2'\]",
     lambda w: lambda: compare([torch.randn(8, 3), torch.randn(8, 2)], torch.arange(8) % 2, methods=["mimo2"])),
]  # fmt: skip


def test_the_matrix_is_large_and_its_ids_unique():
    ids = [case[0] for case in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 30


@pytest.mark.parametrize("error, pattern, setup", [pytest.param(*case[1:], id=case[0]) for case in CASES])
def test_bad_input_raises_a_clear_error_and_changes_nothing(error, pattern, setup):
    world = World()
    call = setup(world)
    before, before_meta = world.tensors(), world.meta()
    with pytest.raises(error, match=pattern):
        call()
    after, after_meta = world.tensors(), world.meta()
    assert len(before) == len(after)
    for i, (a, b) in enumerate(zip(before, after, strict=True)):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(bits(a), bits(b)), f"tensor {i} changed"
    assert before_meta == after_meta, "optimizer hyperparameters or pending losses changed"


# ---- the neighbours of rejected calls: what must still work


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_a_rejected_step_leaves_the_optimizer_usable(name):
    # After the rejection the pending per-objective gradients are still there: fixing the hyperparameter and
    # stepping gives exactly the step a twin optimizer took without the detour.
    world, twin = World(), World()
    _, opt = world.optimizer(name, groups=True)
    _, ref = twin.optimizer(name, groups=True)
    _set_group(opt, 1, mu=NAN)
    with pytest.raises(ValueError, match="mu must be"):
        opt.step()
    _set_group(opt, 1, mu=ref.param_groups[1]["mu"])
    opt.step()
    ref.step()
    for a, b in zip(world.tensors(), twin.tensors(), strict=True):
        assert torch.equal(bits(a), bits(b))


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_a_torch_optim_checkpoint_keeps_gamma_and_mu(kind):
    # torch.optim's param groups have no gamma or mu: the loaded groups keep this optimizer's, and the per-objective
    # path (which needs them) steps.
    model = make_model()
    cls, torch_cls = (MIMOSGD, torch.optim.SGD) if kind == "sgd" else (MIMOAdamW, torch.optim.AdamW)
    torch_opt = torch_cls(model.parameters(), lr=0.05)
    train_step(model, torch_opt, 0, "single")
    resumed = make_model()
    opt = cls(resumed.parameters(), lr=0.1, gamma=0.5, mu=0.2)
    opt.load_state_dict(torch_opt.state_dict())
    assert opt.param_groups[0]["gamma"] == 0.5 and opt.param_groups[0]["mu"] == 0.2
    assert opt.param_groups[0]["lr"] == 0.05
    before = [p.detach().clone() for p in resumed.parameters()]
    train_step(resumed, opt, 1, "objectives")
    assert all(not torch.equal(p, b) for p, b in zip(resumed.parameters(), before, strict=True))
