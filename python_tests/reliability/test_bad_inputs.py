"""The bad-input matrix: one table of bad calls across the public API (the ops, mimo_loss, the
fused step operators, MIMOSGD / MIMOAdamW from construction to load_state_dict, the balancing front end). Each row
names the exception type and a pattern that names the offending argument; every call runs against a fresh World,
and everything the World holds (op buffers, parameters, gradients, flat gradient buffers, optimizer state, param
group hyperparameters, the pending per-objective losses) must be bit-identical after the rejected call.

The ops' rows are the error inputs of python_tests/op_db.py (every op of the table, on its first float32 sample);
the optimizers' and the balancing front end's are listed here. The op-level files (ops/test_blend.py,
test_smooth_max.py, test_step_ops.py) test their own bad inputs per device; this table spans the whole API on the
CPU, with the "nothing changed" check applied uniformly."""

from __future__ import annotations

import math

import pytest
import torch

from mimo_ext.balance import compare
from mimo_ext.balance.methods import make_method
from mimo_ext.optim import MIMOSGD, MIMOAdamW
from python_tests.op_db import META, OP_DB
from python_tests.optim_helpers import bits, make_batch, make_model, objectives, snapshot, train_step

N = 10


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one intra-op thread for tiny tensors


class World:
    """Fresh inputs for one bad call. Optimizers are built on demand (``optimizer``) and registered, so that
    ``state()`` covers them."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.param = torch.randn(N, generator=g)
        self.momentum_buffer = torch.randn(N, generator=g)
        self.step = torch.tensor(3.0)
        self.losses = torch.rand(3, 4, generator=g)
        self.watched: list[torch.Tensor] = []
        self.optimizers: list[tuple[torch.nn.Module, torch.optim.Optimizer]] = []

    def watch(self, args: dict) -> dict:
        """Adds the tensors of an op's arguments to what must be unchanged after the call."""
        for value in args.values():
            self.watched += [v for v in (value if isinstance(value, list) else [value]) if isinstance(v, torch.Tensor)]
        return args

    def tensors(self) -> list[torch.Tensor]:
        own = [self.param, self.momentum_buffer, self.step, self.losses, *self.watched]
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


def _step_after_reshape(world, name):
    # (a .data replaced by one of the same shape, model.to(dtype) for one, is followed as torch.optim follows it)
    model, opt = world.optimizer(name)
    _replace_data(model, reshape=True)
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


def _op_call(op, error):
    """The bad call of one of op_db's error inputs, on the op's first float32 CPU sample (watched by the World)."""

    def setup(world):
        bad = error.change(world.watch(op.sample_inputs("cpu", torch.float32, N, 0)[0]))
        return lambda: op.op(**bad)

    return setup


# (id, exception, pattern naming the argument, setup: World -> the bad call). setup may change the World first
# (a hyperparameter set after construction, a parameter replaced); the snapshot is taken after it. The ops' rows
# come from op_db (each op's error inputs); the rest of the API's are listed here.
OP_CASES = [(f"{op.name}-{e.id}", e.error, e.pattern, _op_call(op, e)) for op in OP_DB for e in op.error_inputs]
CASES = OP_CASES + [
    # ---- optimizers: construction
    ("MIMOSGD-int-parameters", TypeError, "parameters must be floating point",
     lambda w: lambda: MIMOSGD([w.step.long()])),
    ("MIMOAdamW-lr-nan", ValueError, "Invalid learning rate: nan",  # torch.optim.AdamW's check and words
     _construct(MIMOAdamW, lr=NAN)),
    ("MIMOAdamW-lr-int-tensor", ValueError, "lr must be a float or a one-element floating tensor",
     _construct(MIMOAdamW, lr=torch.tensor(1))),
    ("MIMOAdamW-betas-inf", ValueError, "Invalid beta parameter at index 1: inf",
     _construct(MIMOAdamW, betas=(0.9, INF))),
    ("MIMOAdamW-eps-nan", ValueError, "Invalid epsilon value: nan",
     _construct(MIMOAdamW, eps=NAN)),
    ("MIMOSGD-momentum-negative", ValueError, "Invalid momentum value: -0.5",  # torch.optim.SGD's
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
    ("MIMOSGD-step-parameter-reshaped", ValueError, r"parameter \d+ of param_groups\[0\] .* is no longer a view",
     lambda w: _step_after_reshape(w, "sgd")),
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


def test_every_op_of_the_table_has_bad_inputs():
    assert all(op.error_inputs for op in OP_DB), [op.name for op in OP_DB if not op.error_inputs]


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
