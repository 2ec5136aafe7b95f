"""MIMOAdamW / MIMOSGD against torch.optim.AdamW / SGD in the training loops users write: two tables, one test.

The idea is PyTorch's OptimizerInfo / optim_db (torch/testing/_internal/common_optimizers.py): describe the
optimizer configurations once, describe the situations a user meets once, and run every pairing through one
comparison instead of writing one test per pairing.

``OPTIM_DB`` (python_tests/optim_db.py): the optimizer configurations. Each ``OptimConfig`` names our class, torch's
class and the constructor keywords both get (ours adds ``gamma`` and ``mu``; torch's gets ``foreach=False``, its plain
per-tensor loop, the reference).

``SCENARIOS``: the user scenarios. Each :class:`Scenario` row is a generator function that takes a :class:`Side`
(which optimizer it runs: ours or torch's; which path feeds ours its gradients: "single" or "per-objective") and
drives a small training loop on a late-fusion MLP (optim_helpers.make_model), yielding a :class:`Record` (model,
optimizer, extra numbers such as a clip norm or a hook count) after every step. The same function runs for both
sides; it branches on the side only where the scenario itself differs (e.g. which optimizer is switched to after a
checkpoint). A Side feeds gradients the way its path says: ours on "per-objective" calls ``opt.backward(f0, fs)``;
everything else (ours on "single", and torch's always) runs one backward of ``mimo_ext.mimo_loss(f0, fs, gamma, mu)``.
So the reference of both paths is torch.optim on the single backward.

``test_scenario_matches_torch`` runs both sides in lockstep and compares, after every step, every parameter, every
state tensor torch's optimizer holds for it (exp_avg, exp_avg_sq, max_exp_avg_sq, momentum_buffer, step) and the
extra numbers, to float32 rounding.

Adding a row:

- an optimizer configuration: append an ``OptimConfig`` to ``OPTIM_DB`` in python_tests/optim_db.py. Every
  scenario whose ``configs`` is ``ALL`` (all of them now) runs it at once, on both paths.
- a scenario: write a generator ``def my_scenario(side: Side) -> Iterator[Record]`` that builds its model with
  ``side.model()`` and its optimizer with ``side.optimizer(...)``, feeds gradients with ``side.backward`` (or
  ``side.train``) and yields ``Record(model, opt, extras)`` after each step, STEPS times; append a ``Scenario``
  naming it and the configurations it runs with (``ALL``, or a tuple of OPTIM_DB names to trim a slow row). The
  whole file runs in about 15 s on two CPU cores (12 x 8 x 2 cases); keep it under a minute.

Rows that fail are library bugs to fix (a row is never marked xfail here): a drop-in must train as torch.optim does.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import pytest
import torch
from torch import nn

import mimo_ext
from mimo_ext.optim import MIMOSGD, MIMOAdamW, MIMOOptimizer
from python_tests.optim_db import CONFIGS, OPTIM_DB, OptimConfig
from python_tests.optim_helpers import make_batch, make_model, objectives, threads

GAMMA, MU = 0.8, 0.2
STEPS = 8
SINGLE, PER_OBJECTIVE = "single", "per-objective"
PATHS = [SINGLE, PER_OBJECTIVE]
# float32 rounding of a few steps of a few ops on values of order 1 (the atol is scaled by the reference's magnitude).
RTOL, ATOL = 1e-5, 1e-6


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one intra-op thread for tiny tensors


# ---- one side of a comparison


class Record(NamedTuple):
    """What a scenario yields after a step: the model and optimizer now in use, and extra numbers to compare."""

    model: nn.Module
    opt: torch.optim.Optimizer
    extras: dict = {}


@dataclass
class Side:
    """The optimizer a scenario runs (ours or torch's reference) and how gradients reach ours (``path``)."""

    config: OptimConfig
    path: str
    device: str
    ours: bool

    def model(self, seed: int = 0) -> nn.Module:
        return make_model(device=self.device, seed=seed)

    def optimizer(self, params, *, ours: bool | None = None) -> torch.optim.Optimizer:
        """This side's optimizer (``ours`` overrides which class, for the checkpoint switches)."""
        if self.ours if ours is None else ours:
            return self.config.mimo(params, gamma=GAMMA, mu=MU)
        return self.config.torch(params)

    def batch(self, step: int):
        return make_batch(step, device=self.device)

    @staticmethod
    def per_objective(opt, path) -> bool:
        return isinstance(opt, MIMOOptimizer) and path == PER_OBJECTIVE

    def backward(self, opt, f0, fs, *, scaler=None) -> None:
        """Ours on the per-objective path: ``opt.backward``; otherwise one backward of ``mimo_loss``."""
        if self.per_objective(opt, self.path):
            opt.backward(f0, fs, grad_scaler=scaler)
        else:
            loss = mimo_ext.mimo_loss(f0, fs, gamma=GAMMA, mu=MU)
            (scaler.scale(loss) if scaler is not None else loss).backward()

    def clip(self, opt, model, max_norm: float) -> torch.Tensor:
        """``opt.clip_grad_norm_`` for ours on the per-objective path (the blended gradient), torch's otherwise."""
        if self.per_objective(opt, self.path):
            return opt.clip_grad_norm_(max_norm)
        return torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)

    def train(self, model, opt, step: int, *, scaler=None) -> None:
        """One ordinary training step on batch ``step``."""
        opt.zero_grad()
        f0, fs = objectives(model, *self.batch(step))
        self.backward(opt, f0, fs, scaler=scaler)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()


# ---- the scenarios


def plain_training(side: Side) -> Iterator[Record]:
    model = side.model()
    opt = side.optimizer(model.parameters())
    for step in range(STEPS):
        side.train(model, opt, step)
        yield Record(model, opt)


DROP_MODALITY, DROPPED_STEPS = 1, (2, 3, 5)


def modality_dropped(side: Side) -> Iterator[Record]:
    # On the dropped steps modality 1's input is missing: its encoder is not run (its features are zeros in the
    # fusion head's input) and its uni-modal loss is left out, so neither its encoder nor its head gets a gradient
    # (torch's .grad stays None after zero_grad(): torch.optim skips those parameters, and AdamW's bias correction
    # counts steps per parameter).
    model = side.model()
    opt = side.optimizer(model.parameters())
    dropped = [*model.encoders[DROP_MODALITY].parameters(), *model.uni_heads[DROP_MODALITY].parameters()]
    for step in range(STEPS):
        inputs, labels = side.batch(step)
        opt.zero_grad()
        if step in DROPPED_STEPS:
            n, width = labels.shape[0], model.uni_heads[0].in_features
            feats = [
                torch.zeros(n, width, device=side.device) if m == DROP_MODALITY else encoder(x)
                for m, (encoder, x) in enumerate(zip(model.encoders, inputs, strict=True))
            ]
            f0 = nn.functional.cross_entropy(model.fusion_head(torch.cat(feats, dim=1)), labels)
            fs = [
                nn.functional.cross_entropy(head(f), labels)
                for m, (head, f) in enumerate(zip(model.uni_heads, feats, strict=True))
                if m != DROP_MODALITY
            ]
        else:
            f0, fs = objectives(model, inputs, labels)
        side.backward(opt, f0, fs)
        if not side.ours and step in DROPPED_STEPS:
            assert all(p.grad is None for p in dropped), "the construction must leave the dropped encoder unreached"
        opt.step()
        yield Record(model, opt)


FREEZE_AT = 3


def frozen_with_zero_grads(side: Side) -> Iterator[Record]:
    # Encoder 0 is frozen (requires_grad_(False)) from step 3 on, and zero_grad(set_to_none=False) keeps its
    # gradients as zero tensors: torch.optim still steps those parameters (weight decay, momentum and Adam's moments
    # keep moving them).
    model = side.model()
    opt = side.optimizer(model.parameters())
    frozen = list(model.encoders[0].parameters())
    for step in range(STEPS):
        if step == FREEZE_AT:
            model.encoders[0].requires_grad_(False)
        opt.zero_grad(set_to_none=False)
        f0, fs = objectives(model, *side.batch(step))
        side.backward(opt, f0, fs)
        if not side.ours and step >= FREEZE_AT:
            assert all(p.grad is not None and not p.grad.any() for p in frozen)
        opt.step()
        yield Record(model, opt)


def lr_scheduler(side: Side) -> Iterator[Record]:
    model = side.model()
    opt = side.optimizer(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1.0 + 0.5 * s))  # a new lr every step
    for step in range(STEPS):
        side.train(model, opt, step)
        scheduler.step()
        yield Record(model, opt, {"lr": scheduler.get_last_lr()[0]})


def two_param_groups(side: Side) -> Iterator[Record]:
    model = side.model()
    heads = [*model.uni_heads.parameters(), *model.fusion_head.parameters()]
    groups = [{"params": list(model.encoders.parameters()), "lr": 0.02, "weight_decay": 0.05}, {"params": heads}]
    opt = side.optimizer(groups)
    for step in range(STEPS):
        side.train(model, opt, step)
        yield Record(model, opt)


def gradient_accumulation(side: Side) -> Iterator[Record]:
    # Two micro-batches a step, each with its own backward (opt.backward on the per-objective path). There the MIMO
    # weights come from the mean of the calls' uni-modal losses (opt.backward's docstring), which equals torch's
    # two backward passes of mimo_loss only on identical micro-batches: that row uses the same micro-batch twice.
    model = side.model()
    opt = side.optimizer(model.parameters())
    for step in range(STEPS):
        micro = [step, step] if side.path == PER_OBJECTIVE else [step, 100 + step]
        opt.zero_grad()
        for batch in micro:
            f0, fs = objectives(model, *side.batch(batch))
            side.backward(opt, f0, fs)
        opt.step()
        yield Record(model, opt)


MAX_NORM = 0.1


def clipping(side: Side) -> Iterator[Record]:
    model = side.model()
    opt = side.optimizer(model.parameters())
    for step in range(STEPS):
        opt.zero_grad()
        f0, fs = objectives(model, *side.batch(step))
        side.backward(opt, f0, fs)
        norm = side.clip(opt, model, MAX_NORM).item()
        assert norm > MAX_NORM, "pick a smaller MAX_NORM: the clip must be active"
        opt.step()
        yield Record(model, opt, {"total_norm": norm})


SWITCH_AT = 3


def switched(side: Side, *, before: bool, after: bool) -> Iterator[Record]:
    """Our side trains with the optimizer ``before`` says (True: ours), then at step SWITCH_AT loads its
    state_dict into a copy of the model and an optimizer of the class ``after`` says; torch's side never switches."""
    model = side.model()
    opt = side.optimizer(model.parameters(), ours=before if side.ours else False)
    for step in range(STEPS):
        if side.ours and step == SWITCH_AT:
            resumed_model = side.model(seed=1)
            resumed_model.load_state_dict(model.state_dict())
            resumed = side.optimizer(resumed_model.parameters(), ours=after)
            resumed.load_state_dict(opt.state_dict())
            model, opt = resumed_model, resumed
        side.train(model, opt, step)
        yield Record(model, opt)


def checkpoint_ours_to_torch(side: Side) -> Iterator[Record]:
    yield from switched(side, before=True, after=False)


def checkpoint_torch_to_ours(side: Side) -> Iterator[Record]:
    yield from switched(side, before=False, after=True)


def checkpoint_ours_to_ours(side: Side) -> Iterator[Record]:
    # Through torch.save / torch.load of the model's and the optimizer's state_dicts, into a fresh model and
    # optimizer; torch's side never switches.
    model = side.model()
    opt = side.optimizer(model.parameters())
    for step in range(STEPS):
        if side.ours and step == SWITCH_AT:
            buffer = io.BytesIO()
            torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
            del model, opt
            buffer.seek(0)
            saved = torch.load(buffer)
            model = side.model(seed=1)
            model.load_state_dict(saved["model"])
            opt = side.optimizer(model.parameters())
            opt.load_state_dict(saved["opt"])
        side.train(model, opt, step)
        yield Record(model, opt)


def grad_scaler(side: Side) -> Iterator[Record]:
    # A finite scale that grows during the run (growth_interval=3): scaler.step hands our optimizer grad_scale and
    # found_inf; torch's unscales .grad first.
    device_type = torch.device(side.device).type
    try:
        scaler = torch.amp.GradScaler(device_type, init_scale=2.0**8, growth_interval=3)
    except Exception as error:  # an older torch without GradScaler("cpu")
        pytest.skip(f"torch.amp.GradScaler({device_type!r}) is not supported: {error}")
    if not scaler.is_enabled():
        pytest.skip(f"torch.amp.GradScaler({device_type!r}) is disabled here")
    model = side.model()
    opt = side.optimizer(model.parameters())
    for step in range(STEPS):
        side.train(model, opt, step, scaler=scaler)
        yield Record(model, opt, {"scale": scaler.get_scale()})


REMOVE_HOOKS_AT = 5


def step_hooks(side: Side) -> Iterator[Record]:
    # The pre-hook also lowers lr: the step must read it after the hook ran. The hooks are removed after step 5.
    model = side.model()
    opt = side.optimizer(model.parameters())
    calls = {"pre": 0, "post": 0, "pre_got_opt": 0, "post_got_opt": 0}

    def pre(optimizer, args, kwargs):
        calls["pre"] += 1
        calls["pre_got_opt"] += optimizer is opt
        optimizer.param_groups[0]["lr"] *= 0.7

    def post(optimizer, args, kwargs):
        calls["post"] += 1
        calls["post_got_opt"] += optimizer is opt

    handles = [opt.register_step_pre_hook(pre), opt.register_step_post_hook(post)]
    for step in range(STEPS):
        if step == REMOVE_HOOKS_AT:
            for handle in handles:
                handle.remove()
        side.train(model, opt, step)
        yield Record(model, opt, dict(calls))


@dataclass(frozen=True)
class Scenario:
    """A user scenario: a generator function run once per side, and the OPTIM_DB configurations it runs with."""

    name: str
    run: Callable[[Side], Iterator[Record]]
    configs: tuple[str, ...]


ALL = tuple(CONFIGS)
SCENARIOS = [
    Scenario("plain-training", plain_training, ALL),
    Scenario("modality-dropped", modality_dropped, ALL),
    Scenario("frozen-zero-grads", frozen_with_zero_grads, ALL),
    Scenario("lr-scheduler", lr_scheduler, ALL),
    Scenario("two-param-groups", two_param_groups, ALL),
    Scenario("grad-accumulation", gradient_accumulation, ALL),
    Scenario("clip-grad-norm", clipping, ALL),
    Scenario("checkpoint-ours-to-torch", checkpoint_ours_to_torch, ALL),
    Scenario("checkpoint-torch-to-ours", checkpoint_torch_to_ours, ALL),
    Scenario("checkpoint-ours-to-ours", checkpoint_ours_to_ours, ALL),
    Scenario("grad-scaler", grad_scaler, ALL),
    Scenario("step-hooks", step_hooks, ALL),
]


# ---- the comparison


def assert_close_to_torch(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    atol = ATOL * max(1.0, expected.detach().abs().max().item()) if expected.numel() else ATOL
    torch.testing.assert_close(
        actual.detach(), expected.detach(), rtol=RTOL, atol=atol, check_device=False, msg=lambda m: f"{what}: {m}"
    )


def assert_record_matches(ours: Record, theirs: Record, step: int) -> None:
    named = list(ours.model.named_parameters())
    reference = list(theirs.model.parameters())
    assert len(named) == len(reference)
    for (name, p), q in zip(named, reference, strict=True):
        assert_close_to_torch(p, q, f"after step {step}: parameter {name}")
        for key, value in theirs.opt.state.get(q, {}).items():
            if not isinstance(value, torch.Tensor):
                continue
            mine = ours.opt.state.get(p, {}).get(key)
            assert mine is not None, f"after step {step}: parameter {name} lacks torch's state {key!r}"
            assert_close_to_torch(mine, value, f"after step {step}: state {key!r} of parameter {name}")
    assert ours.extras.keys() == theirs.extras.keys()
    for key, value in theirs.extras.items():
        assert ours.extras[key] == pytest.approx(value, rel=RTOL, abs=ATOL), f"after step {step}: {key}"


def cases():
    out = []
    for scenario in SCENARIOS:
        for name in scenario.configs:
            for path in PATHS:
                out.append(pytest.param(CONFIGS[name], scenario, path, id=f"{scenario.name}-{name}-{path}"))
    return out


@pytest.mark.parametrize("config, scenario, path", cases())
def test_scenario_matches_torch(device, config, scenario, path):
    ours = scenario.run(Side(config, path, device, ours=True))
    theirs = scenario.run(Side(config, path, device, ours=False))
    steps = 0
    for step, (a, b) in enumerate(itertools.zip_longest(ours, theirs)):
        assert a is not None and b is not None, f"the two sides ran a different number of steps ({step})"
        assert_record_matches(a, b, step)
        steps += 1
    assert steps == STEPS


def test_tables_are_consistent():
    # Names are unique, every scenario names configurations of OPTIM_DB and runs on both optimizer classes.
    assert len(CONFIGS) == len(OPTIM_DB)
    assert len({s.name for s in SCENARIOS}) == len(SCENARIOS)
    for scenario in SCENARIOS:
        assert set(scenario.configs) <= set(CONFIGS), scenario.name
        classes = {CONFIGS[name].mimo_cls for name in scenario.configs}
        assert classes == {MIMOAdamW, MIMOSGD}, f"{scenario.name} runs on {classes}"


def largest_differences(device: str = "cpu") -> dict[tuple[str, str], float]:
    """Per (scenario, path): the largest |ours - torch| over every configuration, step and parameter."""
    out = {}
    with threads(1):
        for scenario in SCENARIOS:
            for path in PATHS:
                worst = 0.0
                for name in scenario.configs:
                    ours = scenario.run(Side(CONFIGS[name], path, device, ours=True))
                    theirs = scenario.run(Side(CONFIGS[name], path, device, ours=False))
                    for a, b in zip(ours, theirs, strict=True):
                        for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
                            worst = max(worst, (p.detach() - q.detach()).abs().max().item() if p.numel() else 0.0)
                out[(scenario.name, path)] = worst
    return out


if __name__ == "__main__":
    # python -m python_tests.optim.test_user_scenarios: the table of largest differences against torch.optim.
    table = largest_differences()
    print(f"max |ours - torch.optim| over {len(OPTIM_DB)} configurations, every step and parameter")
    print(f"{'scenario':<28} {SINGLE:>12} {PER_OBJECTIVE:>14}")
    for scenario in SCENARIOS:
        row = [table[(scenario.name, path)] for path in PATHS]
        print(f"{scenario.name:<28} {row[0]:>12.1e} {row[1]:>14.1e}")
