"""MIMOSGD / MIMOAdamW as drop-in replacements of torch.optim.SGD / AdamW, with torch.optim itself as the spec:

1. every constructor keyword of torch's optimizers is accepted with its meaning (foreach, fused, capturable: no-ops,
   the step is always one fused, capturable pass) or refused by name (differentiable=True), and stored in the param
   groups as torch stores it, so that each optimizer loads the other's state_dict;
2. copies (copy.deepcopy of the optimizer alone or with its model, pickle, torch.save / torch.load, copy.copy) step
   as torch.optim's copies do: the copy changes only the copy, and gives the numbers of the original and of
   torch.optim;
3. the per-objective path refuses losses that come from a torch.compile'd model (torch's compiled backward does not
   support the repeated backward passes it runs), and the single backward works there.
"""

from __future__ import annotations

import copy
import inspect
import io
import pickle

import pytest
import torch
import torch.distributed as dist
from torch import nn

import mimo_ext
from mimo_ext.optim import MIMOSGD, MIMOAdamW
from python_tests.optim_helpers import (
    assert_bit_identical,
    assert_parameters_in_flat_buffers,
    clone_model,
    make_batch,
    make_model,
    objectives,
    snapshot,
)

GAMMA, MU = 0.8, 0.2


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one intra-op thread for tiny tensors


PAIRS = {"sgd": (MIMOSGD, torch.optim.SGD), "adamw": (MIMOAdamW, torch.optim.AdamW)}


def torch_keys(name: str) -> list[str]:
    """The keyword arguments of torch.optim's constructor (after params)."""
    return [k for k in inspect.signature(PAIRS[name][1].__init__).parameters if k not in ("self", "params")]


# ---- 1. constructor keywords


@pytest.mark.parametrize("name", PAIRS)
def test_signature_takes_every_torch_argument_in_torch_order(name):
    ours = inspect.signature(PAIRS[name][0].__init__).parameters
    theirs = inspect.signature(PAIRS[name][1].__init__).parameters
    for key, parameter in theirs.items():
        assert key in ours, f"{PAIRS[name][0].__name__} lacks torch's argument {key!r}"
        assert ours[key].kind == parameter.kind, (key, ours[key].kind, parameter.kind)
        assert ours[key].default == parameter.default, (key, ours[key].default, parameter.default)
    # The positional arguments in torch's order; ours adds keyword-only ones only.
    positional = [k for k, p in theirs.items() if p.kind == p.POSITIONAL_OR_KEYWORD]
    assert [k for k, p in ours.items() if p.kind == p.POSITIONAL_OR_KEYWORD] == positional
    extra = {k: p.kind for k, p in ours.items() if k not in theirs}
    assert set(extra) == {"gamma", "mu", "diagnostics", "sync", "process_group"}
    assert all(kind == inspect.Parameter.KEYWORD_ONLY for kind in extra.values())


def flag_cases():
    out = []
    for name in PAIRS:
        for key, values in [("foreach", [None, True, False]), ("fused", [None, True, False])]:
            out += [pytest.param(name, {key: v}, id=f"{name}-{key}={v}") for v in values]
        out.append(pytest.param(name, {"differentiable": False}, id=f"{name}-differentiable=False"))
        out.append(pytest.param(name, {"fused": False, "foreach": True}, id=f"{name}-fused=False-foreach=True"))
    out += [pytest.param("adamw", {"capturable": v}, id=f"adamw-capturable={v}") for v in (True, False)]
    out.append(pytest.param("adamw", {"capturable": True, "fused": True}, id="adamw-capturable-fused"))
    return out


@pytest.mark.parametrize("name, flags", flag_cases())
def test_torch_flags_are_stored_as_torch_stores_them_and_change_nothing(name, flags):
    ours_cls, torch_cls = PAIRS[name]
    kw = {"lr": 0.05, "weight_decay": 0.01} | ({"momentum": 0.9} if name == "sgd" else {})
    model = make_model()
    plain_model, torch_model, stored_model = clone_model(model), clone_model(model), clone_model(model)
    opt = ours_cls(model.parameters(), gamma=GAMMA, mu=MU, **kw, **flags)
    plain = ours_cls(plain_model.parameters(), gamma=GAMMA, mu=MU, **kw)
    reference = torch_cls(torch_model.parameters(), **kw, foreach=False)
    # Built with the same arguments, torch.optim's param groups and defaults hold the same keys and values.
    stored = torch_cls(stored_model.parameters(), **kw, **flags)
    for ours_dict, torch_dict in [
        (opt.defaults, stored.defaults),
        (opt.state_dict()["param_groups"][0], stored.state_dict()["param_groups"][0]),
    ]:
        assert {k: v for k, v in ours_dict.items() if k not in ("gamma", "mu")} == torch_dict
    # The step is the same fused pass whatever the flags: bit-identical to the optimizer built without them, and
    # torch.optim's update to float32 rounding.
    for step in range(3):
        for m, o in [(model, opt), (plain_model, plain), (torch_model, reference)]:
            o.zero_grad()
            f0, fs = objectives(m, *make_batch(step))
            if o is not reference:
                o.backward(f0, fs)
            else:
                mimo_ext.mimo_loss(f0, fs, gamma=GAMMA, mu=MU).backward()
            o.step()
    assert_bit_identical(snapshot(opt), snapshot(plain))
    for p, q in zip(model.parameters(), torch_model.parameters(), strict=True):
        torch.testing.assert_close(p, q)
        for key, value in reference.state[q].items():
            torch.testing.assert_close(opt.state[p][key], value)


@pytest.mark.parametrize("name", PAIRS)
def test_differentiable_true_is_refused_by_name(name):
    ours_cls, torch_cls = PAIRS[name]
    match = "differentiable=True is not supported"
    model = make_model()
    with pytest.raises(ValueError, match=match):
        ours_cls(model.parameters(), differentiable=True)
    with pytest.raises(ValueError, match=match):  # in a param group
        ours_cls([{"params": list(model.parameters()), "differentiable": True}])
    opt = ours_cls(model.parameters(), lr=0.01)
    with pytest.raises(ValueError, match=match):  # in a param group that is added
        opt.add_param_group({"params": [nn.Parameter(torch.ones(2))], "differentiable": True})
    assert len(opt.param_groups) == 1
    # Set on a group after construction: step() refuses before writing anything.
    objectives(model, *make_batch(0))[0].backward()
    before = snapshot(opt)
    opt.param_groups[0]["differentiable"] = True
    with pytest.raises(ValueError, match=match):
        opt.step()
    assert_bit_identical(before, snapshot(opt))
    opt.param_groups[0]["differentiable"] = False
    # In a torch.optim state_dict: refused before anything is loaded.
    torch_opt = torch_cls(clone_model(model).parameters(), lr=0.5, differentiable=True)
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(torch_opt.state_dict())
    assert opt.param_groups[0]["lr"] == 0.01 and opt.param_groups[0]["differentiable"] is False


@pytest.mark.parametrize("name", PAIRS)
def test_fused_with_foreach_raises_torch_error_before_building(name):
    ours_cls, torch_cls = PAIRS[name]
    model = make_model()
    before = [p.data_ptr() for p in model.parameters()]
    with pytest.raises(RuntimeError) as torch_error:
        torch_cls(clone_model(model).parameters(), fused=True, foreach=True)
    with pytest.raises(RuntimeError) as ours_error:
        ours_cls(model.parameters(), fused=True, foreach=True)
    assert str(ours_error.value) == str(torch_error.value)
    # Raised before the parameters were moved into flat buffers.
    assert [p.data_ptr() for p in model.parameters()] == before


@pytest.mark.parametrize(
    "name, key", [("sgd", "capturable"), ("sgd", "decoupled_weight_decay"), ("adamw", "decoupled_weight_decay")]
)
def test_keywords_torch_does_not_take_are_refused_by_name(name, key):
    # torch.optim.AdamW (2.14) takes no decoupled_weight_decay (only Adam does), SGD no capturable: the same
    # TypeError, naming the keyword.
    ours_cls, torch_cls = PAIRS[name]
    with pytest.raises(TypeError, match=key):
        torch_cls(make_model().parameters(), **{key: True})
    with pytest.raises(TypeError, match=key):
        ours_cls(make_model().parameters(), **{key: True})


def test_adamw_refuses_a_group_with_l2_weight_decay():
    # torch.optim.AdamW runs Adam's L2 weight decay for a group with decoupled_weight_decay=False; the fused step has
    # decoupled decay only: refused by name, at construction and when set later.
    params = list(make_model().parameters())
    torch.optim.AdamW([{"params": params[:2], "decoupled_weight_decay": False}])  # torch accepts it
    with pytest.raises(ValueError, match="decoupled_weight_decay=False"):
        MIMOAdamW([{"params": params[:2], "decoupled_weight_decay": False}])
    opt = MIMOAdamW(params)
    assert opt.param_groups[0]["decoupled_weight_decay"] is True
    opt.param_groups[0]["decoupled_weight_decay"] = False
    with pytest.raises(ValueError, match="decoupled_weight_decay=False"):
        opt.step()


def test_adamw_loads_an_adam_state_dict_as_torch_adamw_does():
    # torch.optim.AdamW loads any state_dict with decoupled_weight_decay=True (AdamW.__setstate__); so does ours.
    model = make_model()
    adam = torch.optim.Adam(clone_model(model).parameters(), lr=0.02)
    torch_adamw = torch.optim.AdamW(clone_model(model).parameters())
    ours = MIMOAdamW(model.parameters())
    torch_adamw.load_state_dict(adam.state_dict())
    ours.load_state_dict(adam.state_dict())
    assert torch_adamw.param_groups[0]["decoupled_weight_decay"] is True
    assert ours.param_groups[0]["decoupled_weight_decay"] is True
    assert ours.param_groups[0]["lr"] == 0.02


@pytest.mark.parametrize("name", PAIRS)
def test_state_dicts_load_both_ways_with_torch_keys(name):
    ours_cls, torch_cls = PAIRS[name]
    flags = {"foreach": True} | ({"capturable": True} if name == "adamw" else {})
    model, torch_model = make_model(), make_model()
    ours = ours_cls(model.parameters(), lr=0.03, gamma=GAMMA, mu=MU, **flags)
    theirs = torch_cls(torch_model.parameters(), lr=0.04, fused=True)
    for m, o in [(model, ours), (torch_model, theirs)]:  # both with state to load
        objectives(m, *make_batch(0))[0].backward()
        o.step()
    keys = set(theirs.state_dict()["param_groups"][0]) - {"params"}
    assert set(ours.state_dict()["param_groups"][0]) - {"params"} == keys | {"gamma", "mu"}

    # torch -> ours: torch's values of its keys, ours of gamma and mu; the loaded optimizer steps.
    loaded_model = make_model(seed=1)
    loaded = ours_cls(loaded_model.parameters(), gamma=GAMMA, mu=MU)
    loaded.load_state_dict(theirs.state_dict())
    group = loaded.param_groups[0]
    assert {k: group[k] for k in keys} == {k: theirs.param_groups[0][k] for k in keys}
    assert (group["gamma"], group["mu"]) == (GAMMA, MU)
    loaded.backward(*objectives(loaded_model, *make_batch(1)))
    loaded.step()

    # ours -> torch: torch's optimizer gets our values of its keys (gamma and mu ride along, unused) and steps.
    other_model = make_model(seed=1)
    other = torch_cls(other_model.parameters(), lr=0.5)
    other.load_state_dict(ours.state_dict())
    group = other.param_groups[0]
    assert {k: group[k] for k in keys} == {k: ours.param_groups[0][k] for k in keys}
    if name == "adamw":
        group["capturable"] = False  # torch's capturable step wants a GPU (ours runs anywhere)
    objectives(other_model, *make_batch(1))[0].backward()
    other.step()

    # A checkpoint written before these keys existed (an older torch or mimo_ext) loads, with the values
    # torch.optim's __setstate__ gives a group that lacks them.
    old = ours.state_dict()
    for key in ("foreach", "fused", "capturable", "differentiable", "decoupled_weight_decay"):
        old["param_groups"][0].pop(key, None)
    fresh, reference = ours_cls(make_model(seed=1).parameters()), torch_cls(make_model(seed=1).parameters())
    fresh.load_state_dict(old)
    reference.load_state_dict(old)
    assert {k: fresh.param_groups[0][k] for k in keys} == {k: reference.param_groups[0][k] for k in keys}


# ---- 2. copies


OPTIONS = {
    "sgd": {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01},
    "adamw": {"lr": 0.01, "weight_decay": 0.05, "amsgrad": True},
}


def make_pair(name, params):
    ours_cls, _ = PAIRS[name]
    return ours_cls(params, gamma=GAMMA, mu=MU, **OPTIONS[name])


def make_torch(name, params):
    return PAIRS[name][1](params, foreach=False, **OPTIONS[name])


def copy_of(kind, model, opt):
    """(model copy or None, optimizer copy), made the way ``kind`` says."""
    if kind == "deepcopy-optimizer":
        return None, copy.deepcopy(opt)
    if kind == "deepcopy-model-and-optimizer":
        return copy.deepcopy((model, opt))
    if kind == "pickle-model-and-optimizer":
        return pickle.loads(pickle.dumps((model, opt)))
    buffer = io.BytesIO()
    torch.save((model, opt), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


class Trainee:
    """A model (or, for a copy of an optimizer alone, the copied parameters run through a model of the same shape)
    and its optimizer."""

    def __init__(self, model, opt, shell=None):
        self.model, self.opt = model, opt
        if model is None:
            names = [n for n, _ in shell.named_parameters()]
            self.shell = shell
            self.params = dict(zip(names, opt.param_groups[0]["params"], strict=True))

    def forward(self, inputs):
        if self.model is not None:
            return self.model(inputs)
        return torch.func.functional_call(self.shell, self.params, (inputs,))

    def parameters(self):
        return list(self.model.parameters()) if self.model is not None else list(self.params.values())

    def step(self, step, path):
        inputs, labels = make_batch(step, device=self.parameters()[0].device)
        self.opt.zero_grad()
        fused, uni = self.forward(inputs)
        f0 = nn.functional.cross_entropy(fused, labels)
        fs = [nn.functional.cross_entropy(z, labels) for z in uni]
        if path == "objectives":
            self.opt.backward(f0, fs)
        else:
            mimo_ext.mimo_loss(f0, fs, gamma=GAMMA, mu=MU).backward()
        self.opt.step()


def assert_matches_torch(ours: Trainee, theirs: Trainee):
    for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(p, q)
        for key, value in theirs.opt.state[q].items():
            torch.testing.assert_close(ours.opt.state[p][key], value, msg=key)


COPY_KINDS = ["deepcopy-optimizer", "deepcopy-model-and-optimizer", "pickle-model-and-optimizer", "torch-save-load"]
WARM, STEPS = 3, 3


@pytest.mark.parametrize("path", ["objectives", "single"])
@pytest.mark.parametrize("kind", COPY_KINDS)
@pytest.mark.parametrize("name", PAIRS)
def test_copy_steps_as_the_original_and_as_torch(device, name, kind, path):
    model, torch_model = make_model(device=device), make_model(device=device)
    opt, reference = make_pair(name, model.parameters()), make_torch(name, torch_model.parameters())
    original, torch_original = Trainee(model, opt), Trainee(torch_model, reference)
    for step in range(WARM):
        original.step(step, path)
        torch_original.step(step, "single")

    copy_model, copy_opt = copy_of(kind, model, opt)
    torch_copy_model, torch_copy_opt = copy_of(kind, torch_model, reference)
    shell = make_model(seed=99, device=device)
    copied = Trainee(copy_model, copy_opt, shell)
    torch_copied = Trainee(torch_copy_model, torch_copy_opt, shell)
    # The copy's parameters are new tensors in flat buffers of its own; copied with the model, they are the copied
    # model's parameters.
    assert assert_parameters_in_flat_buffers(copy_opt).isdisjoint(assert_parameters_in_flat_buffers(opt))
    if copy_model is not None:
        assert all(a is b for a, b in zip(copy_model.parameters(), copy_opt.param_groups[0]["params"], strict=True))
    assert_bit_identical(snapshot(opt), snapshot(copy_opt))

    # Stepping the copy leaves the original alone...
    before = snapshot(opt)
    model_before = [p.detach().clone() for p in model.parameters()]
    for step in range(WARM, WARM + STEPS):
        copied.step(step, path)
        torch_copied.step(step, "single")
    assert_bit_identical(before, snapshot(opt))
    assert_bit_identical(model_before, [p.detach() for p in model.parameters()])
    # ... and gives the numbers the original then gets, bit for bit, and torch.optim's (and its copy's).
    for step in range(WARM, WARM + STEPS):
        original.step(step, path)
        torch_original.step(step, "single")
    assert_bit_identical(snapshot(opt), snapshot(copy_opt))
    assert_bit_identical([p.detach() for p in original.parameters()], [p.detach() for p in copied.parameters()])
    assert_matches_torch(original, torch_original)
    assert_matches_torch(copied, torch_copied)
    assert opt.state[next(iter(model.parameters()))]["step"].item() == WARM + STEPS


@pytest.mark.parametrize("kind", COPY_KINDS[1:])
def test_copy_keeps_per_parameter_step_counts_groups_and_dtypes(kind):
    # Two param groups, a float64 bucket beside a float32 one, lr as a tensor, and a parameter ("late") that no
    # objective reached before the copy, in a bucket that has stepped: its step count is still 0, as torch.optim's
    # per-parameter count would be, and the copy must keep each parameter's count.
    torch.manual_seed(0)
    model = nn.ModuleDict({"a": nn.Linear(4, 3), "late": nn.Linear(4, 3, bias=False), "b": nn.Linear(3, 2).double()})
    groups = [
        {"params": [*model["a"].parameters(), model["late"].weight, model["b"].weight]},
        {"params": [model["b"].bias], "lr": 0.05, "weight_decay": 0.1},
    ]
    opt = MIMOAdamW(groups, lr=torch.tensor(0.02), gamma=GAMMA, mu=MU)
    assert [len(buckets) for buckets in opt._buckets] == [2, 1]

    def step(m, o, i, reach_late):
        generator = torch.Generator().manual_seed(i)
        x = torch.randn(5, 4, generator=generator)
        h = m["a"](x)
        if reach_late:
            h = h + m["late"](x)
        out = m["b"](h.double())
        o.zero_grad()
        o.backward(out.pow(2).mean(), [out[:, 0].abs().mean(), out[:, 1].pow(2).mean()])
        o.step()

    for i in range(2):
        step(model, opt, i, reach_late=False)
    assert [opt.state[p]["step"].item() for p in opt._buckets[0][0].params] == [2, 2, 0]
    copy_model, copy_opt = copy_of(kind, model, opt)
    for o, m in [(copy_opt, copy_model), (opt, model)]:
        for i in range(2, 5):
            step(m, o, i, reach_late=True)
    assert_bit_identical(snapshot(opt), snapshot(copy_opt))


def test_copy_keeps_a_state_buffer_its_option_no_longer_uses():
    # SGD's momentum turned off keeps its buffer in the original; turned on again, both continue from it.
    model = make_model()
    opt = MIMOSGD(model.parameters(), lr=0.1, momentum=0.9)
    train = Trainee(model, opt)
    for step in range(2):
        train.step(step, "objectives")
    opt.param_groups[0]["momentum"] = 0.0
    train.step(2, "objectives")
    copy_model, copy_opt = copy.deepcopy((model, opt))
    copied = Trainee(copy_model, copy_opt)
    for t in (train, copied):
        t.opt.param_groups[0]["momentum"] = 0.9
        for step in range(3, 5):
            t.step(step, "objectives")
    assert_bit_identical(snapshot(opt), snapshot(copy_opt))


@pytest.mark.parametrize("name", PAIRS)
def test_shallow_copy_steps_the_same_parameters_as_torch(name):
    # copy.copy of a torch.optim optimizer shares its param groups and state: stepping either updates the shared
    # parameters. Ours shares its flat buffers as well.
    model, torch_model = make_model(), make_model()
    opt, reference = make_pair(name, model.parameters()), make_torch(name, torch_model.parameters())
    shallow, torch_shallow = copy.copy(opt), copy.copy(reference)
    assert shallow.param_groups is opt.param_groups and torch_shallow.param_groups is reference.param_groups
    for step in range(4):
        for o, m in [(opt if step % 2 else shallow, model), (reference if step % 2 else torch_shallow, torch_model)]:
            Trainee(m, o).step(step, "single")
    assert_matches_torch(Trainee(model, opt), Trainee(torch_model, reference))
    assert_matches_torch(Trainee(model, shallow), Trainee(torch_model, torch_shallow))


@pytest.fixture
def single_rank_process_group():
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_copies_of_a_distributed_optimizer(single_rank_process_group):
    # A deepcopy keeps the process group (same process); a pickled copy resolves sync again where it is loaded (the
    # default group); an optimizer with a group of its own cannot be pickled, and says so.
    model = make_model()
    opt = MIMOAdamW(model.parameters(), lr=0.01, sync=True)
    assert opt._dist_group is dist.group.WORLD
    Trainee(model, opt).step(0, "objectives")
    for kind in ("deepcopy-model-and-optimizer", "pickle-model-and-optimizer", "torch-save-load"):
        copy_model, copy_opt = copy_of(kind, model, opt)
        assert copy_opt._dist_group is dist.group.WORLD, kind
        Trainee(copy_model, copy_opt).step(1, "objectives")
    group = dist.new_group([0])
    own = MIMOAdamW(make_model().parameters(), sync=True, process_group=group)
    assert copy.deepcopy(own)._dist_group is group
    with pytest.raises(TypeError, match="process_group=.*cannot be pickled"):
        pickle.dumps(own)


# ---- 3. the per-objective path under torch.compile


def compiled_model_and_twin(backend="aot_eager"):
    torch._dynamo.reset()
    model = make_model()
    eager = clone_model(model)
    return model, torch.compile(model, backend=backend), eager


def test_per_objective_path_refuses_a_compiled_model_before_any_backward():
    model, compiled, _ = compiled_model_and_twin()
    opt = MIMOSGD(model.parameters(), lr=0.1, gamma=GAMMA, mu=MU)
    f0, fs = objectives(compiled, *make_batch(0))
    with pytest.raises(ValueError, match=r"torch\.compile.*CompiledFunctionBackward.*mimo_loss") as error:
        opt.backward(f0, fs)
    assert "donated buffers" in str(error.value)
    # Nothing ran: no gradient anywhere, and the graph is still whole (the single backward the message points to
    # can use these very losses).
    assert all(p.grad is None for p in model.parameters())
    mimo_ext.mimo_loss(f0, fs, gamma=GAMMA, mu=MU).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_per_objective_path_refuses_a_compiled_encoder_and_a_compiled_training_step():
    # A region compiled deeper in the graph (one encoder) is found too; and a whole training step compiled with
    # torch.compile (the forward becomes a compiled region, the backward passes run outside it).
    torch._dynamo.reset()
    model = make_model()
    model.encoders[1] = torch.compile(model.encoders[1], backend="aot_eager")
    opt = MIMOAdamW(model.parameters())
    with pytest.raises(ValueError, match="CompiledFunctionBackward"):
        opt.backward(*objectives(model, *make_batch(0)))

    model = make_model()
    opt = MIMOAdamW(model.parameters())

    @torch.compile(backend="aot_eager")
    def training_step(inputs, labels):
        opt.zero_grad()
        opt.backward(*objectives(model, inputs, labels))
        opt.step()

    with pytest.raises(ValueError, match="CompiledFunctionBackward"):
        training_step(*make_batch(0))


def test_per_objective_path_of_an_eager_model_is_unchanged():
    # Each objective's gradient (autograd's own tensor per objective) is that objective's own gradient, as
    # autograd gives it alone.
    model = make_model(dtype=torch.float64)
    opt = MIMOSGD(model.parameters(), lr=0.1)
    f0, fs = objectives(model, *make_batch(0, dtype=torch.float64))
    params = list(model.parameters())
    expected = [torch.autograd.grad(f, params, retain_graph=True, allow_unused=True) for f in [f0, *fs]]
    opt.backward(f0, fs)
    (bucket,) = opt._buckets[0]
    for k, grads in enumerate(expected):
        for i, g in enumerate(grads):
            got = bucket.pieces[k][i]
            if g is None:
                # (g0 of a parameter only a uni-modal loss reaches is a zero tensor: .grad None means "none at all")
                assert got is None or (k == 0 and not got.any())
            else:
                torch.testing.assert_close(got, g, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("name", PAIRS)
def test_single_backward_of_a_compiled_model_matches_eager(name):
    # The path the refusal points to, with torch's default backend and batch sizes that change (a recompile: where
    # the per-objective path went wrong).
    model, compiled, eager = compiled_model_and_twin(backend="inductor")
    opt, eager_opt = make_pair(name, model.parameters()), make_pair(name, eager.parameters())
    for step, n in enumerate([10, 10, 12, 14]):
        for m, o in [(compiled, opt), (eager, eager_opt)]:
            inputs, labels = make_batch(step, n=n)
            o.zero_grad()
            f0, fs = objectives(m, inputs, labels)
            mimo_ext.mimo_loss(f0, fs, gamma=GAMMA, mu=MU).backward()
            o.step()
        for p, q in zip(model.parameters(), eager.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
