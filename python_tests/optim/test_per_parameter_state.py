"""torch.optim keeps its state per parameter: a step count of its own for each (AdamW's bias correction, SGD's first
momentum step), an update for every parameter whose ``.grad`` is a tensor (zeros included), and a state_dict with
one ``step`` per parameter. These tests train a late-fusion model where parameters step on different steps (a
modality dropped on some steps, an encoder frozen with zero_grad(set_to_none=False)) and compare MIMOAdamW / MIMOSGD
with torch.optim on both ways of feeding gradients, through checkpoints in both directions; and check that a
sub-module's state_dict is sized to the sub-module although its parameters live in the optimizer's flat buffer."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

import mimo_ext
from mimo_ext.optim import MIMOSGD, MIMOAdamW
from mimo_ext.optim.step_counts import StepCounts
from python_tests.optim_helpers import make_batch, make_model

GAMMA, MU = 0.8, 0.2
PAIRS = {
    "adamw": (MIMOAdamW, torch.optim.AdamW, {"lr": 0.02, "weight_decay": 0.1}),
    "adamw-amsgrad": (MIMOAdamW, torch.optim.AdamW, {"lr": 0.02, "amsgrad": True}),
    "sgd-momentum": (MIMOSGD, torch.optim.SGD, {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.01}),
}
PATHS = ["single", "objectives"]
# float32 rounding over ~12 steps of a small model.
ATOL = 2e-6


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one intra-op thread for tiny tensors


def losses(model, step: int, dropped: int | None, device):
    """f0 and the uni-modal losses of batch ``step``; a dropped modality's encoder output is replaced by zeros and
    its uni-modal loss left out, so its encoder and head get no gradient (``.grad`` None after zero_grad())."""
    inputs, labels = make_batch(step, device=device)
    feats = [encoder(x) for encoder, x in zip(model.encoders, inputs, strict=True)]
    if dropped is not None:
        feats[dropped] = torch.zeros_like(feats[dropped]).detach()
    f0 = nn.functional.cross_entropy(model.fusion_head(torch.cat(feats, dim=1)), labels)
    uni = [
        nn.functional.cross_entropy(head(f), labels)
        for m, (head, f) in enumerate(zip(model.uni_heads, feats, strict=True))
        if m != dropped
    ]
    return f0, uni


def feed(model, opt, step, path, dropped=None, set_to_none=True):
    opt.zero_grad(set_to_none=set_to_none)
    f0, uni = losses(model, step, dropped, next(model.parameters()).device)
    if path == "objectives" and isinstance(opt, (MIMOAdamW, MIMOSGD)):
        opt.backward(f0, uni)
    else:
        mimo_ext.mimo_loss(f0, uni, gamma=GAMMA, mu=MU).backward()
    opt.step()


def dropped_on(step: int) -> int | None:
    """Modality 1 is missing on steps 1, 2 and 5, modality 0 on step 4."""
    return {1: 1, 2: 1, 4: 0, 5: 1}.get(step)


def make_pair(name, device):
    ours_cls, torch_cls, options = PAIRS[name]
    model = make_model(device=device)
    twin = make_model(device=device)
    return (
        model,
        ours_cls(model.parameters(), gamma=GAMMA, mu=MU, **options),
        twin,
        torch_cls(twin.parameters(), foreach=False, **options),
    )


def assert_same(model, twin):
    for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        assert (p - q).abs().max().item() <= ATOL, name


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", PAIRS)
def test_modality_dropped_on_some_steps_matches_torch(device, name, path):
    model, opt, twin, reference = make_pair(name, device)
    for step in range(12):
        feed(model, opt, step, path, dropped_on(step))
        feed(twin, reference, step, "single", dropped_on(step))
        assert_same(model, twin)
    # Each parameter counts its own steps: encoder 1 missed three of the 12, encoder 0 one.
    counts = {id(p): opt.state[p]["step"].item() for p in model.parameters()}
    assert counts[id(model.encoders[1][0].weight)] == 9 and counts[id(model.encoders[0][0].weight)] == 11
    assert counts[id(model.fusion_head.weight)] == 12


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", PAIRS)
def test_encoder_frozen_with_zeroed_grads_keeps_stepping_as_torch(device, name, path):
    # zero_grad(set_to_none=False) keeps a zero .grad on the frozen encoder; torch.optim still updates it (weight
    # decay, momentum, AdamW's moving averages), and so must we.
    model, opt, twin, reference = make_pair(name, device)
    for step in range(10):
        if step == 3:
            for m in (model, twin):
                m.encoders[0].requires_grad_(False)
        feed(model, opt, step, path, set_to_none=False)
        feed(twin, reference, step, "single", set_to_none=False)
        assert_same(model, twin)
    assert opt.state[model.encoders[0][0].weight]["step"].item() == 10


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", PAIRS)
@pytest.mark.parametrize("direction", ["ours-to-torch", "torch-to-ours"])
def test_checkpoint_moves_between_torch_and_ours_with_identical_next_steps(device, name, path, direction):
    model, opt, twin, reference = make_pair(name, device)
    for step in range(6):  # parameters end with different step counts
        feed(model, opt, step, path, dropped_on(step))
        feed(twin, reference, step, "single", dropped_on(step))
    # The saved state is torch's format: one step tensor per parameter, each its own value.
    saved = opt.state_dict()
    steps = [entry["step"] for entry in saved["state"].values()]
    assert len({id(s) for s in steps}) == len(steps) and sorted({s.item() for s in steps}) == [3.0, 5.0, 6.0]
    ours_cls, torch_cls, options = PAIRS[name]
    buffer = io.BytesIO()
    source = opt if direction == "ours-to-torch" else reference
    torch.save({"model": (model if source is opt else twin).state_dict(), "opt": source.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    resumed_model = make_model(device=device, seed=7)
    resumed_model.load_state_dict(checkpoint["model"])
    if direction == "ours-to-torch":
        resumed = torch_cls(resumed_model.parameters(), foreach=False, **options)
        resumed_path = "single"
    else:
        resumed = ours_cls(resumed_model.parameters(), gamma=GAMMA, mu=MU, **options)
        resumed_path = path
    resumed.load_state_dict(checkpoint["opt"])
    for step in range(6, 12):
        feed(resumed_model, resumed, step, resumed_path, dropped_on(step))
        feed(twin, reference, step, "single", dropped_on(step))
        assert_same(resumed_model, twin)


def test_sub_module_state_dict_is_sized_to_the_sub_module():
    model = make_model()
    opt = MIMOAdamW(model.parameters())
    head = model.uni_heads[0]
    buffer = io.BytesIO()
    torch.save(head.state_dict(), buffer)
    own = sum(p.numel() * p.element_size() for p in head.parameters())
    whole = sum(p.numel() * p.element_size() for p in model.parameters())
    assert own * 4 < whole
    # Pickle framing adds a few hundred bytes; the whole flat buffer would add `whole`.
    assert len(buffer.getvalue()) < own + 2048
    # ... and the parameters still live in the flat buffer: a step changes what the model reads.
    before = head.weight.detach().clone()
    feed(model, opt, 0, "single")
    assert not torch.equal(before, head.weight)
    (bucket,) = opt._buckets[0]
    index = next(i for i, p in enumerate(bucket.params) if p is head.weight)
    assert torch.equal(bucket.view(bucket.param_buffer, index), head.weight)


def test_state_dict_of_earlier_format_loads_its_step_flags():
    # Checkpoints of earlier mimo_ext kept one shared count per bucket and flagged the parameters not yet stepped.
    model = make_model()
    opt = MIMOAdamW(model.parameters(), gamma=GAMMA, mu=MU)
    feed(model, opt, 0, "single")
    saved = opt.state_dict()
    shared = torch.tensor(3.0)
    for entry in saved["state"].values():
        entry["step"] = shared
    stepped = [True] * len(saved["state"])
    stepped[0] = False
    saved["mimo_step_flags"] = [[[True, stepped]]]
    opt.load_state_dict(saved)
    params = list(model.parameters())
    assert opt.state[params[0]]["step"].item() == 0 and opt.state[params[1]]["step"].item() == 3


def test_step_counts_split_only_partly_reached_classes_and_advance_each_once():
    counts = StepCounts(5, torch.device("cpu"))
    assert counts.split([True] * 5) is False
    for _, _, count in counts.runs([True] * 5, [0, 1, 2, 3, 4], [1] * 5):
        count.add_(1)
    assert counts.split([True, False, True, True, False]) is True
    runs = counts.runs([True, False, True, True, False], [0, 1, 2, 3, 4], [1] * 5)
    # Parameters 0 and 2-3 share a count but are not consecutive: two launches, one advancing the shared count.
    assert [(start, stop) for start, stop, _ in runs] == [(0, 1), (2, 4)]
    assert runs[0][2] is counts.of(0) and runs[1][2] is not counts.of(2) and runs[1][2].item() == 1
    for _, _, count in runs:
        count.add_(1)
    assert [c.item() for c in counts.values()] == [2, 1, 2, 2, 1]
    counts.prune()
    assert len(counts.counts) == 2
    counts.reset([4, 0, 4, 1, 0])
    assert counts.of(0) is counts.of(2) and counts.of(1) is counts.of(4) and len(counts.counts) == 3


@pytest.mark.parametrize("name", PAIRS)
def test_backward_through_parameters_changed_by_a_step_raises_as_with_torch(name):
    # torch.optim updates parameters in place, bumping their version counters, so a backward through a graph that
    # saved a parameter before the step raises instead of using the new values silently; so does ours.
    for ours in (True, False):
        model, opt, twin, reference = make_pair(name, "cpu")
        net, optimizer = (model, opt) if ours else (twin, reference)
        f0, uni = losses(net, 0, None, "cpu")
        loss = mimo_ext.mimo_loss(f0, uni, gamma=GAMMA, mu=MU)
        loss.backward(retain_graph=True)
        optimizer.step()
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            loss.backward()


def two_linears():
    torch.manual_seed(0)
    return torch.nn.ModuleList([torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)])


def test_loading_a_checkpoint_without_state_for_a_parameter_restarts_it_from_zeros():
    # Into an optimizer that has stepped: a parameter the checkpoint holds no state for starts afresh, as in torch.
    x = torch.ones(1, 3)
    model = two_linears()
    opt = MIMOAdamW(model.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        (model[0](x).sum() + model[1](x).sum()).backward()
        opt.step()
    twin = two_linears()
    reference = torch.optim.AdamW(twin.parameters(), lr=0.1)
    reference.zero_grad()
    twin[0](x).sum().backward()  # only the first layer has state in this checkpoint
    reference.step()
    model.load_state_dict(twin.state_dict())
    opt.load_state_dict(reference.state_dict())
    fresh = model[1].weight
    assert opt.state[fresh]["exp_avg"].abs().max().item() == 0 and opt.state[fresh]["step"].item() == 0
    for o, m in ((opt, model), (reference, twin)):
        o.zero_grad()
        (m[0](x).sum() + m[1](x).sum()).backward()
        o.step()
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=ATOL)


def test_per_objective_path_skips_a_parameter_whose_grad_was_set_to_none():
    # model.zero_grad() sets .grad to None: torch.optim then leaves the parameter alone, whatever it did before.
    x = torch.ones(1, 3)
    model = two_linears()
    opt = MIMOAdamW(model.parameters(), lr=0.1, weight_decay=0.5)
    opt.zero_grad()
    opt.backward(model[0](x).sum() + model[1](x).sum(), [model[0](x).pow(2).sum()])
    opt.step()
    model.zero_grad()
    before = model[1].weight.detach().clone()
    opt.backward(model[0](x).sum(), [model[0](x).pow(2).sum()])
    opt.step()
    assert torch.equal(model[1].weight, before)


def test_a_zero_size_parameter_counts_its_steps_as_torch():
    counts = []
    for cls in (MIMOAdamW, torch.optim.AdamW):
        empty, other = torch.nn.Parameter(torch.zeros(0)), torch.nn.Parameter(torch.ones(3))
        opt = cls([empty, other], lr=0.1)
        for step in range(3):
            opt.zero_grad()
            (other.sum() + (empty.sum() if step else 0)).backward()
            opt.step()
        counts.append((opt.state[empty]["step"].item(), opt.state[other]["step"].item()))
    assert counts[0] == counts[1] == (2.0, 3.0)


def test_deleting_the_optimizer_frees_its_buffers():
    import gc
    import weakref

    model = torch.nn.Linear(50, 50)
    opt = MIMOAdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 50)).sum().backward()
    opt.step()
    state = weakref.ref(opt._buckets[0][0].state["exp_avg"])
    del opt
    gc.collect()
    assert state() is None  # the parameters' gradient hooks do not keep the bucket alive
    model(torch.ones(1, 50)).sum().backward()  # and the hooks left on the parameters do nothing
