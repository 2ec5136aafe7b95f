"""torch.optim's behaviour in four scenarios its own suite checks, side by side with torch.optim.AdamW / SGD: loading a
state_dict of an older torch whose groups lack newer keys, a key that is not a parameter in ``opt.state``, the same
parameters listed twice (``param_groups.extend(param_groups)``), and the constructor's hyperparameter checks, run
before the parameters are read, with torch's exception types and messages."""

from __future__ import annotations

import copy
import re

import pytest
import torch

from mimo_ext.optim import MIMOSGD, MIMOAdamW

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one intra-op thread for tiny tensors

PAIRS = {
    "adamw": (MIMOAdamW, torch.optim.AdamW, {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True}),
    "sgd": (MIMOSGD, torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
}
# torch.optim's keys added after its first release (OptimizerInfo.not_og_supported_flags of AdamW and SGD), plus the
# algorithm flags its __setstate__ also fills (amsgrad, nesterov).
NEWER_KEYS = ("maximize", "foreach", "differentiable", "fused", "capturable", "amsgrad", "nesterov")


def twin_params(seed=0):
    torch.manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(5, 3, dtype=torch.float64)), torch.nn.Parameter(torch.randn(7))]
    return params, [torch.nn.Parameter(p.detach().clone()) for p in params]


def stepped_once(cls, kw):
    """An optimizer of ``cls`` over fresh parameters, after one step: (optimizer, parameters)."""
    params, _ = twin_params()
    opt = cls(params, **kw)
    step(opt, params, 1)
    return opt, params


def step(opt, params, seed):
    gen = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
    opt.step()


@pytest.mark.parametrize("name", PAIRS)
def test_older_state_dict_lacking_newer_keys_loads_with_torchs_defaults(name):
    ours_cls, torch_cls, kw = PAIRS[name]
    results = []
    for cls in (ours_cls, torch_cls):
        opt, params = stepped_once(cls, kw)
        old = copy.deepcopy(opt.state_dict())
        for group in old["param_groups"]:
            for key in NEWER_KEYS:
                group.pop(key, None)
        opt.load_state_dict(old)
        step(opt, params, 2)  # it can still step, as torch's suite checks
        groups = opt.state_dict()["param_groups"]
        results.append(([p.detach().clone() for p in params], {k: groups[0].get(k) for k in NEWER_KEYS}))
    (ours_params, ours_keys), (torch_params, torch_keys) = results
    for a, b in zip(ours_params, torch_params, strict=True):
        torch.testing.assert_close(a, b)
    # The algorithm keys get torch's values; so do the flags, except AdamW's fused/foreach whose defaults are None
    # in both.
    assert ours_keys == torch_keys


@pytest.mark.parametrize("name", PAIRS)
def test_non_parameter_key_in_state_is_kept_by_state_dict(name):
    ours_cls, torch_cls, kw = PAIRS[name]
    dicts = []
    for cls in (ours_cls, torch_cls):
        opt, params = stepped_once(cls, kw)
        # As torch's test_state_dict_pre_hook does: a state_dict pre-hook puts a non-parameter key in opt.state.
        opt.register_state_dict_pre_hook(lambda o: o.state.__setitem__("test", 1))
        state_dict = opt.state_dict()
        assert state_dict["state"]["test"] == 1
        dicts.append(state_dict)
        # and it loads back, the key kept in opt.state as torch.optim keeps it
        opt.load_state_dict(state_dict)
        assert opt.state["test"] == 1
        step(opt, params, 2)
    assert sorted(map(str, dicts[0]["state"])) == sorted(map(str, dicts[1]["state"]))


@pytest.mark.parametrize("name", PAIRS)
def test_param_groups_listed_twice_give_torchs_state_dict(name):
    ours_cls, torch_cls, kw = PAIRS[name]
    dicts = []
    for cls in (ours_cls, torch_cls):
        opt, params = stepped_once(cls, kw)
        # torch's test_state_dict_deterministic (pytorch#36831): repeated parameters have identical representation.
        opt.param_groups.extend(opt.param_groups)
        dicts.append(opt.state_dict())
    ours, theirs = dicts
    assert [g["params"] for g in ours["param_groups"]] == [g["params"] for g in theirs["param_groups"]] == [[0, 1]] * 2
    assert ours["state"].keys() == theirs["state"].keys()
    for index, entries in theirs["state"].items():
        for key, value in entries.items():
            torch.testing.assert_close(ours["state"][index][key], value, check_device=False)


# (keywords, exception type, torch's message) per optimizer: torch.optim.AdamW's / SGD's constructor checks.
BAD_ARGUMENTS = {
    "adamw": [
        ({"lr": -0.1}, ValueError, "Invalid learning rate: -0.1"),
        ({"lr": torch.tensor([1e-3, 1e-3])}, ValueError, "Tensor lr must be 1-element"),
        ({"lr": torch.tensor(1e-3), "foreach": True}, ValueError, "lr as a Tensor is not supported for capturable"),
        ({"eps": -1.0}, ValueError, "Invalid epsilon value: -1.0"),
        ({"betas": (1.0, 0.0)}, ValueError, "Invalid beta parameter at index 0: 1.0"),
        ({"betas": (0.9, 1.5)}, ValueError, "Invalid beta parameter at index 1: 1.5"),
        ({"weight_decay": -1}, ValueError, "Invalid weight_decay value: -1"),
        ({"betas": (0.9, torch.tensor(0.99))}, ValueError, "betas must be either both floats or both Tensors"),
        ({"betas": (torch.tensor(0.9), torch.tensor(0.99)), "foreach": True}, ValueError, r"betas\[0\] as a Tensor"),
        ({"fused": True, "foreach": True}, RuntimeError, "`fused` and `foreach` cannot be `True` together"),
        ({"fused": True, "differentiable": True}, RuntimeError, "`fused` does not support `differentiable`"),
    ],
    "sgd": [
        ({"lr": -0.1}, ValueError, "Invalid learning rate: -0.1"),
        ({"lr": torch.tensor([1e-3, 1e-3])}, ValueError, "Tensor lr must be 1-element"),
        ({"momentum": -0.5}, ValueError, "Invalid momentum value: -0.5"),
        ({"weight_decay": -1.0}, ValueError, "Invalid weight_decay value: -1.0"),
        ({"nesterov": True}, ValueError, "Nesterov momentum requires a momentum and zero dampening"),
        ({"nesterov": True, "momentum": 0.9, "dampening": 0.1}, ValueError, "Nesterov momentum requires a momentum"),
        ({"fused": True, "foreach": True}, RuntimeError, "`fused` and `foreach` cannot be `True` together"),
    ],
}


class Unreadable:
    """A params argument that fails the test if it is read: the checks must come first."""

    def __iter__(self):
        raise AssertionError("the parameters were read before the hyperparameters were checked")


@pytest.mark.parametrize(
    "name,index", [(name, i) for name, cases in BAD_ARGUMENTS.items() for i in range(len(cases))]
)
def test_hyperparameter_checks_come_first_with_torchs_exception(name, index):
    ours_cls, torch_cls, _ = PAIRS[name]
    kwargs, error, message = BAD_ARGUMENTS[name][index]
    params, twins = twin_params()
    with pytest.raises(error, match=message) as theirs:
        torch_cls(twins, **kwargs)
    with pytest.raises(error, match=message) as ours:
        ours_cls(Unreadable(), **kwargs)
    assert type(ours.value) is type(theirs.value)
    assert str(ours.value) == str(theirs.value)
    with pytest.raises(error, match=re.escape(str(theirs.value))):
        ours_cls(params, **kwargs)
    assert all(p._base is None for p in params)  # nothing was moved into flat buffers
