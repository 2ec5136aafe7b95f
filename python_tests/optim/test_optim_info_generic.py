"""Generic tests in the style of torch's own test_optim.py (written here; that file is not in the wheel), driven by
the OptimizerInfo entries of python_tests/optim_infos.py: every configuration of torch's AdamW / SGD entry and every
error input is run on our optimizer and on torch.optim's, and must give the same results and the same errors."""

from __future__ import annotations

import copy
import io
import re
import warnings

import pytest
import torch
from torch.nn import Parameter
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from python_tests.optim_infos import MIMO_OPTIM_DB, TORCH_CLASS, configurations

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one intra-op thread for tiny tensors

DTYPES = (torch.float32, torch.float64)
CASES = [
    pytest.param(info, desc, kwargs, dtype, id=f"{info.name}-{desc}-{str(dtype)[6:]}")
    for info in MIMO_OPTIM_DB
    for dtype in DTYPES
    for desc, kwargs, _ in configurations(info, "cpu", dtype)
]
# The configurations torch's entries add on CUDA (capturable, Tensor lr and betas): run on a GPU only.
CUDA_CASES = [
    pytest.param(info, desc, kwargs, id=f"{info.name}-{desc}")
    for info in MIMO_OPTIM_DB
    for desc, kwargs, _ in configurations(info, "cuda")
    if desc not in {d for d, _, _ in configurations(info, "cpu")}
]
INFOS = [pytest.param(info, id=info.name) for info in MIMO_OPTIM_DB]
ERROR_CASES = [
    pytest.param(info, error, id=f"{info.name}-{error.optimizer_error_input.desc}")
    for info in MIMO_OPTIM_DB
    for error in info.optim_error_inputs_func("cpu", torch.float32)
]


def make_params(dtype=torch.float32, seed=0, device="cpu"):
    """torch's test model (weight, bias) at odd sizes, plus a twin with the same values for torch's optimizer."""
    torch.manual_seed(seed)
    weight = Parameter(torch.randn(10, 5, dtype=dtype).to(device))
    bias = Parameter(torch.randn(10, dtype=dtype).to(device))
    return [weight, bias], [Parameter(p.detach().clone()) for p in (weight, bias)]


def closure_for(params, opt, seed):
    weight, bias = params
    x = torch.randn(5, dtype=weight.dtype, generator=torch.Generator().manual_seed(seed)).to(weight.device)

    def closure():
        opt.zero_grad()
        loss = (weight.mv(x) + bias).pow(2).sum()
        loss.backward()
        return loss

    return closure


def build_pair(info, kwargs, dtype=torch.float32, seed=0, device="cpu"):
    ours_params, torch_params = make_params(dtype, seed, device)
    ours = info.optim_cls(ours_params, **copy.deepcopy(kwargs))
    theirs = TORCH_CLASS[info.optim_cls](torch_params, **copy.deepcopy(kwargs))
    return ours, ours_params, theirs, torch_params


def run_steps(opt, params, steps, first=0, schedulers=()) -> torch.Tensor:
    """``steps`` steps with closures; the losses, in the parameters' dtype (compared with its tolerance)."""
    losses = []
    for i in range(first, first + steps):
        losses.append(opt.step(closure_for(params, opt, i)).detach())
        for scheduler in schedulers:
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(losses[-1].item())
            else:
                scheduler.step()
    return torch.stack(losses)


def assert_params_close(ours, theirs):
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a.detach(), b.detach())


def skip_unsupported(info, desc, device="cpu"):
    for config_desc, _, reason in configurations(info, device):
        if config_desc == desc and reason is not None:
            pytest.skip(f"unsupported configuration: {reason}")


# ---- results


@pytest.mark.parametrize("info,desc,kwargs,dtype", CASES)
def test_configuration_steps_as_torch(info, desc, kwargs, dtype):
    """Each configuration: the same losses and parameters as torch.optim over steps (torch's
    test_forloop_goes_right_direction, compared with torch instead of only "the loss went down")."""
    skip_unsupported(info, desc)
    ours, ours_params, theirs, torch_params = build_pair(info, kwargs, dtype)
    ours_losses = run_steps(ours, ours_params, 6)
    torch_losses = run_steps(theirs, torch_params, 6)
    torch.testing.assert_close(ours_losses, torch_losses)
    assert_params_close(ours_params, torch_params)
    assert ours_losses[-1] < ours_losses[0]


@pytest.mark.parametrize("info,desc,kwargs", CUDA_CASES)
def test_cuda_configuration_steps_as_torch(info, desc, kwargs, cuda_device):
    """The CUDA-only configurations of torch's entries (capturable, Tensor lr, Tensor betas), on the GPU."""
    skip_unsupported(info, desc, "cuda")
    ours, ours_params, theirs, torch_params = build_pair(info, kwargs, device=cuda_device)
    torch.testing.assert_close(run_steps(ours, ours_params, 6), run_steps(theirs, torch_params, 6))
    assert_params_close(ours_params, torch_params)


@pytest.mark.parametrize("info,desc,kwargs,dtype", CASES)
def test_param_groups_with_their_own_lr_and_weight_decay(info, desc, kwargs, dtype):
    """torch's test_param_groups_weight_decay / test_param_groups_lr: a group's own options override defaults."""
    skip_unsupported(info, desc)
    ours_params, torch_params = make_params(dtype)
    results = []
    for cls, (weight, bias) in ((info.optim_cls, ours_params), (TORCH_CLASS[info.optim_cls], torch_params)):
        kw = {k: v for k, v in copy.deepcopy(kwargs).items() if k != "lr"}
        groups = [{"params": [weight], "weight_decay": 0.1}, {"params": [bias], "lr": 0.05}]
        opt = cls(groups, **kw)
        results.append(run_steps(opt, [weight, bias], 4))
    torch.testing.assert_close(results[0], results[1])
    assert_params_close(ours_params, torch_params)


@pytest.mark.parametrize("info,desc,kwargs,dtype", CASES)
def test_tensor_lr_steps_as_float_lr(info, desc, kwargs, dtype):
    """torch's test_tensor_lr: a one-element tensor lr gives the float lr's steps."""
    skip_unsupported(info, desc)
    if kwargs.get("foreach") and not kwargs.get("capturable"):
        pytest.skip("Tensor lr with foreach=True and capturable=False is refused by torch.optim (tested as an error)")
    lr = float(kwargs.get("lr", 1e-3))
    with_float = {**copy.deepcopy(kwargs), "lr": lr}
    with_tensor = {**copy.deepcopy(kwargs), "lr": torch.tensor(lr, dtype=torch.float64)}
    a = info.optim_cls(make_params(dtype)[0], **with_float)
    a_params = [p for g in a.param_groups for p in g["params"]]
    b = info.optim_cls(make_params(dtype)[0], **with_tensor)
    b_params = [p for g in b.param_groups for p in g["params"]]
    torch.testing.assert_close(run_steps(a, a_params, 4), run_steps(b, b_params, 4))
    assert_params_close(a_params, b_params)


# ---- state_dict


@pytest.mark.parametrize("info,desc,kwargs,dtype", CASES)
def test_state_dict_resumes_identically_and_loads_into_torch(info, desc, kwargs, dtype):
    """torch's test_state_dict_deterministic and test_save_load_equality_with_weights_only: a saved (weights_only
    torch.load) and loaded state_dict steps on identically; it loads into torch.optim too, with the same steps."""
    skip_unsupported(info, desc)
    ours, ours_params, theirs, torch_params = build_pair(info, kwargs, dtype)
    run_steps(ours, ours_params, 3)
    run_steps(theirs, torch_params, 3)
    buffer = io.BytesIO()
    torch.save(ours.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed_params = [Parameter(p.detach().clone()) for p in ours_params]
    resumed = info.optim_cls(resumed_params, **copy.deepcopy(kwargs))
    resumed.load_state_dict(saved)
    into_torch_params = [Parameter(p.detach().clone()) for p in ours_params]
    into_torch = TORCH_CLASS[info.optim_cls](into_torch_params, **copy.deepcopy(kwargs))
    into_torch.load_state_dict(copy.deepcopy(saved))
    expected = run_steps(ours, ours_params, 3, first=3)
    assert torch.equal(run_steps(resumed, resumed_params, 3, first=3), expected)  # bit-identical
    torch.testing.assert_close(run_steps(into_torch, into_torch_params, 3, first=3), expected)
    torch.testing.assert_close(run_steps(theirs, torch_params, 3, first=3), expected)
    assert_params_close(resumed_params, ours_params)
    assert_params_close(into_torch_params, torch_params)


def assert_reloaded_edit_steps_as_torch(info, desc, kwargs, dtype, edit):
    """Both optimizers step twice, reload their own state_dict after ``edit(state_dict)``, and step on alike."""
    skip_unsupported(info, desc)
    ours, ours_params, theirs, torch_params = build_pair(info, kwargs, dtype)
    for opt, params in ((ours, ours_params), (theirs, torch_params)):
        run_steps(opt, params, 2)
        state_dict = copy.deepcopy(opt.state_dict())
        edit(state_dict)
        opt.load_state_dict(state_dict)
    torch.testing.assert_close(run_steps(ours, ours_params, 2, 2), run_steps(theirs, torch_params, 2, 2))
    assert_params_close(ours_params, torch_params)


@pytest.mark.parametrize("info,desc,kwargs,dtype", CASES)
def test_can_load_older_state_dict(info, desc, kwargs, dtype):
    """torch's test_can_load_older_state_dict: the groups lack the flags added after the first release."""

    def drop_newer_flags(state_dict):
        for group in state_dict["param_groups"]:
            for flag in info.not_og_supported_flags:
                group.pop(flag, None)

    assert_reloaded_edit_steps_as_torch(info, desc, kwargs, dtype, drop_newer_flags)


@pytest.mark.parametrize("info,desc,kwargs,dtype", CASES)
def test_load_state_dict_with_python_number_steps(info, desc, kwargs, dtype):
    """torch's test_load_nontensor_step: a checkpoint whose step counts are Python numbers (older torch)."""

    def steps_as_numbers(state_dict):
        for state in state_dict["state"].values():
            if torch.is_tensor(state.get("step")):
                state["step"] = state["step"].item()

    assert_reloaded_edit_steps_as_torch(info, desc, kwargs, dtype, steps_as_numbers)


@pytest.mark.parametrize("info", INFOS)
def test_named_parameters_state_dict_loads_to_and_from_torch(info):
    """torch's test_can_load_from_to_named_state_dict: parameters given with names (the state_dict has
    param_names), loaded from torch's optimizer into ours and back."""
    kwargs = {"lr": 0.01}
    ours_params, torch_params = make_params()
    ours = info.optim_cls(list(zip(("weight", "bias"), ours_params, strict=True)), **kwargs)
    theirs = TORCH_CLASS[info.optim_cls](list(zip(("weight", "bias"), torch_params, strict=True)), **kwargs)
    run_steps(theirs, torch_params, 2)
    run_steps(ours, ours_params, 2)
    assert ours.state_dict()["param_groups"][0]["param_names"] == theirs.state_dict()["param_groups"][0]["param_names"]
    ours.load_state_dict(copy.deepcopy(theirs.state_dict()))
    theirs.load_state_dict(copy.deepcopy(ours.state_dict()))
    for p, q in zip(ours_params, torch_params, strict=True):
        with torch.no_grad():
            p.copy_(q)
    torch.testing.assert_close(run_steps(ours, ours_params, 2, 2), run_steps(theirs, torch_params, 2, 2))


@pytest.mark.parametrize("info", INFOS)
def test_state_dict_and_load_state_dict_hooks_run_as_torchs(info):
    """torch's test_state_dict_pre_hook / post_hook / test_load_state_dict_pre_post_hook."""
    records = []
    for cls, params in ((info.optim_cls, make_params()[0]), (TORCH_CLASS[info.optim_cls], make_params()[1])):
        opt = cls(params, lr=0.01)
        run_steps(opt, params, 1)
        opt.register_state_dict_pre_hook(lambda o: o.state.__setitem__("test", 1))

        def post_hook(o, state_dict):
            state_dict["ran_state_dict_post_hook"] = state_dict["state"].pop("test", None) == 1

        opt.register_state_dict_post_hook(post_hook)
        opt.register_load_state_dict_pre_hook(lambda o, sd: sd["param_groups"][0].__setitem__("lr", 0.002))
        opt.register_load_state_dict_post_hook(lambda o: o.state.__setitem__("ran_load_post_hook", True))
        state_dict = opt.state_dict()
        opt.load_state_dict(state_dict)
        ran = (state_dict["ran_state_dict_post_hook"], opt.param_groups[0]["lr"], opt.state["ran_load_post_hook"])
        records.append(ran)
    assert records[0] == records[1] == (True, 0.002, True)


# ---- step and its hooks


@pytest.mark.parametrize("info", INFOS)
def test_step_hooks_run_in_torchs_order(info):
    """torch's test_step_pre_hook / test_step_post_hook / test_step_all_hooks (global and per optimizer)."""
    orders = []
    for cls, params in ((info.optim_cls, make_params()[0]), (TORCH_CLASS[info.optim_cls], make_params()[1])):
        order = []
        opt = cls(params, lr=0.01)
        handles = [
            register_optimizer_step_pre_hook(lambda o, a, k: order.append("global pre")),
            register_optimizer_step_post_hook(lambda o, a, k: order.append("global post")),
            opt.register_step_pre_hook(lambda o, a, k: order.append("pre")),
            opt.register_step_post_hook(lambda o, a, k: order.append("post")),
        ]
        try:
            run_steps(opt, params, 2)
        finally:
            for handle in handles:
                handle.remove()
        orders.append(order)
    assert orders[0] == orders[1] == ["global pre", "pre", "post", "global post"] * 2


@pytest.mark.parametrize("info", INFOS)
def test_step_is_noop_when_params_have_no_grad(info):
    ours_params, torch_params = make_params()
    before = [p.detach().clone() for p in ours_params]
    ours = info.optim_cls(ours_params, lr=0.1, weight_decay=0.1)
    theirs = TORCH_CLASS[info.optim_cls](torch_params, lr=0.1, weight_decay=0.1)
    for _ in range(3):
        ours.step()
        theirs.step()
    assert_params_close(ours_params, before)
    assert_params_close(torch_params, before)


@pytest.mark.parametrize("info", INFOS)
def test_state_is_not_empty_after_a_step(info):
    """torch's test_non_empty_state: every stepped parameter has state."""
    params, _ = make_params()
    opt = info.optim_cls(params, lr=0.01, **({"momentum": 0.9} if info.name == "MIMOSGD" else {}))
    run_steps(opt, params, 1)
    assert all(len(opt.state[p]) > 0 for p in params)


@pytest.mark.parametrize("info", INFOS)
def test_mixed_dtype_params_step_as_torch(info):
    """torch's test_mixed_device_dtype on one device: float32 and float64 parameters in one optimizer."""
    ours_params, torch_params = make_params()
    for params in (ours_params, torch_params):
        params[1] = Parameter(params[1].detach().double())
    ours = info.optim_cls(ours_params, lr=0.01)
    theirs = TORCH_CLASS[info.optim_cls](torch_params, lr=0.01)
    for opt, params in ((ours, ours_params), (theirs, torch_params)):
        for i in range(3):
            opt.zero_grad()
            (params[0].sum(1).double() * params[1]).pow(2).sum().backward()
            opt.step()
    assert_params_close(ours_params, torch_params)


@pytest.mark.parametrize("info", INFOS)
def test_optimizer_can_be_printed_and_deepcopied(info):
    """torch's test_optimizer_can_be_printed and test_deepcopy_copies_all_public_attrs."""
    params, twins = make_params()
    opt = info.optim_cls(params, lr=0.01)
    theirs = TORCH_CLASS[info.optim_cls](twins, lr=0.01)
    assert repr(opt).startswith(f"{info.name} (")
    assert repr(opt).count("Parameter Group") == repr(theirs).count("Parameter Group")
    run_steps(opt, params, 1)
    copied = copy.deepcopy(opt)
    public = {k for k in opt.__dict__ if not k.startswith("_")}
    assert public == {k for k in copied.__dict__ if not k.startswith("_")}
    assert public >= {k for k in theirs.__dict__ if not k.startswith("_")}


# ---- errors


@pytest.mark.parametrize("info,error", ERROR_CASES)
def test_error_inputs_raise_torchs_errors(info, error):
    """torch's test_errors: every error input of torch's entry, on ours and on torch's optimizer: the same
    exception type (or warning) matching torch's expected message, raised at construction."""
    optim_input = error.optimizer_error_input
    ours_params, torch_params = make_params()

    def build(cls, params):
        given = optim_input.params
        if given is None:
            given = params
        return cls(given, **copy.deepcopy(optim_input.kwargs))

    results = []
    for cls, params in ((info.optim_cls, ours_params), (TORCH_CLASS[info.optim_cls], torch_params)):
        if issubclass(error.error_type, Warning):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                build(cls, params)
            matching = [w for w in caught if issubclass(w.category, error.error_type)]
            assert any(re.search(error.error_regex, str(w.message)) for w in matching), [str(w.message) for w in caught]
            results.append(error.error_type)
        else:
            with pytest.raises(error.error_type, match=error.error_regex) as raised:
                build(cls, params)
            results.append((type(raised.value), str(raised.value)))
    assert results[0] == results[1]


# ---- gradients as torch.optim takes them: complex, sparse, assigned by the user, on meta parameters


@pytest.mark.parametrize("info", INFOS)
def test_complex_parameters_step_as_torch(info):
    """torch's test_complex: complex parameters step as their real view."""
    torch.manual_seed(0)
    z = Parameter(torch.randn(4, 3, dtype=torch.complex64))
    twin = Parameter(z.detach().clone())
    ours = info.optim_cls([z], lr=0.01)
    theirs = TORCH_CLASS[info.optim_cls]([twin], lr=0.01)
    for opt, p in ((ours, z), (theirs, twin)):
        for _ in range(3):
            opt.zero_grad()
            (p * p.conj()).real.sum().backward()
            opt.step()
    torch.testing.assert_close(z.detach(), twin.detach())


@pytest.mark.parametrize("info", INFOS)
def test_sparse_gradients_as_torch(info):
    """torch's SGD steps a sparse gradient; AdamW refuses it with a RuntimeError."""
    emb, twin = torch.nn.Embedding(6, 3, sparse=True), torch.nn.Embedding(6, 3, sparse=True)
    twin.load_state_dict(emb.state_dict())
    outcomes = []
    for cls, module in ((info.optim_cls, emb), (TORCH_CLASS[info.optim_cls], twin)):
        opt = cls(module.parameters(), lr=0.1)
        module(torch.tensor([0, 2, 2])).sum().backward()
        try:
            opt.step()
            outcomes.append(None)
        except RuntimeError as error:
            assert "sparse" in str(error).lower(), error  # a refusal that says why, as torch's AdamW's
            outcomes.append(RuntimeError)
    assert outcomes[0] == outcomes[1]
    torch.testing.assert_close(emb.weight.detach(), twin.weight.detach())


@pytest.mark.parametrize("info", INFOS)
def test_user_assigned_grad_is_kept_and_not_written(info):
    """torch.optim reads a .grad the user assigned and never writes or replaces it."""
    params, _ = make_params()
    opt = info.optim_cls(params, lr=0.01)
    grads = [torch.ones_like(p) for p in params]
    for p, g in zip(params, grads, strict=True):
        p.grad = g
    opt.step()
    assert all(p.grad is g and g._version == 0 for p, g in zip(params, grads, strict=True))


@pytest.mark.parametrize("info", INFOS)
def test_builds_on_meta_parameters(info):
    """Meta-init then to_empty, as FSDP2 users do: torch.optim builds on meta parameters."""
    with torch.device("meta"):
        model = torch.nn.Linear(4, 3)
    TORCH_CLASS[info.optim_cls](model.parameters(), lr=0.01)
    info.optim_cls(model.parameters(), lr=0.01)
