"""The step ops given one gradient in pieces (the gradients of consecutive slices of param, as the optimizers pass
autograd's own ``.grad`` tensors): the same update as the same gradient in one flat buffer, against the plain-PyTorch
reference, opcheck, and the refusals (lengths that do not add up, a non-contiguous or wrongly typed piece)."""

from __future__ import annotations

import pytest
import torch

from python_tests.ops.calls import ADAMW_OPTIONS, SGD_OPTIONS, Call, op_and_reference, split_arguments
from python_tests.references import FLOAT_DTYPES, assert_within_reference_error, math_eps

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one intra-op thread for tiny tensors

# Piece shapes, odd sizes, an empty piece among them; their lengths add up to the buffer's.
PIECE_SHAPES = [(7, 3), (0,), (5,), (2, 3, 4), (1,), (33,)]
LENGTH = sum(torch.Size(s).numel() for s in PIECE_SHAPES)
CASES = [pytest.param("sgd", o, id=f"sgd-{n}") for n, o in SGD_OPTIONS.items()] + [
    pytest.param("adamw", o, id=f"adamw-{n}") for n, o in ADAMW_OPTIONS.items()
]


def pieces_of(flat: torch.Tensor) -> list[torch.Tensor]:
    """``flat``'s values as separate tensors (copies, not views) of PIECE_SHAPES."""
    out, at = [], 0
    for shape in PIECE_SHAPES:
        n = torch.Size(shape).numel()
        out.append(flat[at : at + n].clone().view(shape))
        at += n
    return out


def with_pieces(call: Call) -> Call:
    other = call.clone()
    other.grads = pieces_of(call.grads[0])
    return other


@pytest.mark.parametrize("scaling", [(None, None), (512.0, 0.0), (2.0, 1.0)], ids=["plain", "scaled", "skipped"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("algorithm, options", CASES)
def test_pieces_give_the_flat_update(device, algorithm, options, dtype, scaling):
    op, reference = op_and_reference(algorithm)
    hyper, step = options
    flat = Call(algorithm, hyper, step, LENGTH, 1, dtype, device, *scaling, seed=3)
    pieces = with_pieces(flat)
    grads_before = [g.clone() for g in pieces.grads]
    stats_flat = flat.run(op)
    stats_pieces = pieces.run(op)
    # Element-wise: the same bits as the flat call, whatever the cut.
    assert torch.equal(pieces.param, flat.param)
    for a, b in zip(pieces.states, flat.states, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(pieces.step, flat.step)
    # The pieces are read, never written.
    for g, before in zip(pieces.grads, grads_before, strict=True):
        assert torch.equal(g, before) and g._version == before._version
    # The statistics are sums: the same up to the order of summation.
    assert stats_pieces.shape == stats_flat.shape == (2,)
    torch.testing.assert_close(stats_pieces, stats_flat, rtol=64 * math_eps(dtype), atol=0)
    # And against the reference given the same pieces, in float64 (the truth) and in the call's dtype.
    fresh = Call(algorithm, hyper, step, LENGTH, 1, dtype, device, *scaling, seed=3)
    truth = with_pieces(fresh.clone(dtype=torch.float64, device="cpu"))
    ref = with_pieces(fresh.clone(device="cpu"))
    truth.run(reference)
    ref.run(reference)
    assert_within_reference_error(pieces.param.cpu(), truth.param, ref.param, what="param")


@pytest.mark.parametrize("algorithm", ["sgd", "adamw"])
def test_one_piece_of_another_shape(device, algorithm):
    """A single piece that is not 1-D (one 2-D parameter's .grad) is the whole gradient."""
    op, _ = op_and_reference(algorithm)
    hyper, step = SGD_OPTIONS["no-momentum-wd"] if algorithm == "sgd" else ADAMW_OPTIONS["wd-first-step"]
    flat = Call(algorithm, hyper, step, 35, 1, torch.float32, device, seed=1)
    shaped = flat.clone()
    shaped.grads = [flat.grads[0].clone().view(5, 7)]
    flat.run(op)
    shaped.run(op)
    assert torch.equal(shaped.param, flat.param)


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("algorithm", ["sgd", "adamw"])
def test_opcheck_with_pieces(device, algorithm, dtype, k):
    hyper, step = (SGD_OPTIONS if algorithm == "sgd" else ADAMW_OPTIONS)[
        "momentum-dampening-wd-maximize" if algorithm == "sgd" else "amsgrad-maximize"
    ]
    call = Call(algorithm, hyper, step, LENGTH, k, dtype, device, 8.0, 0.0)
    call = with_pieces(call) if k == 1 else with_k_pieces(call)  # K = 3: some pieces missing
    op, _ = op_and_reference(algorithm)
    torch.library.opcheck(op, *split_arguments(call.arguments(compute_stats=k == 1)))


@pytest.mark.parametrize("algorithm", ["sgd", "adamw"])
def test_bad_pieces_are_refused_before_any_write(device, algorithm):
    op, _ = op_and_reference(algorithm)
    hyper, step = SGD_OPTIONS["no-momentum-wd"] if algorithm == "sgd" else ADAMW_OPTIONS["wd-first-step"]
    base = with_pieces(Call(algorithm, hyper, step, LENGTH, 1, torch.float32, device))
    short = base.clone()
    short.grads = short.grads[:-1]
    strided = base.clone()
    strided.grads[0] = strided.grads[0].t()  # (3, 7) transposed: not contiguous
    typed = base.clone()
    typed.grads[3] = typed.grads[3].double()
    assert_refused(op, [(short, "pieces that cover param"), (strided, "contiguous"), (typed, "dtype of param")])


def assert_refused(op, cases) -> None:
    """Each call raises (TypeError for a dtype, ValueError otherwise) naming the fault, and writes nothing."""
    for call, message in cases:
        before = [t.clone() for t in call.tensors()]
        with pytest.raises(TypeError if message == "dtype of param" else ValueError, match=message):
            call.run(op)
        for t, b in zip(call.tensors(), before, strict=True):
            assert torch.equal(t, b)


# Which (objective, piece) has no gradient (an empty tensor): the others' lengths still tile param.
MISSING = {(1, 0), (1, 3), (2, 5), (2, 1)}


def with_k_pieces(call: Call) -> Call:
    """``call``'s K buffers in pieces, objective-major; the MISSING ones empty, and zero in ``call`` itself."""
    other = call.clone()
    other.grads = []
    for k, g in enumerate(call.grads):
        for j, piece in enumerate(pieces_of(g)):
            other.grads.append(piece.new_empty(0) if (k, j) in MISSING else piece)
    at = 0
    for j, shape in enumerate(PIECE_SHAPES):
        n = torch.Size(shape).numel()
        for k in range(len(call.grads)):
            if (k, j) in MISSING:
                call.grads[k][at : at + n] = 0
        at += n
    return other


@pytest.mark.parametrize("compute_stats", [True, False])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("algorithm, options", CASES)
def test_k_objectives_in_pieces_some_missing_give_the_flat_update(device, algorithm, options, dtype, compute_stats):
    op, reference = op_and_reference(algorithm)
    hyper, step = options
    flat = Call(algorithm, hyper, step, LENGTH, 3, dtype, device, seed=5)
    pieces = with_k_pieces(flat)
    stats_flat = flat.run(op, compute_stats)
    stats_pieces = pieces.run(op, compute_stats)
    assert torch.equal(pieces.param, flat.param)
    for a, b in zip(pieces.states, flat.states, strict=True):
        assert torch.equal(a, b)
    assert stats_pieces.shape == stats_flat.shape == ((6,) if compute_stats else (0,))
    torch.testing.assert_close(stats_pieces, stats_flat, rtol=64 * math_eps(dtype), atol=0)
    ref = with_k_pieces(Call(algorithm, hyper, step, LENGTH, 3, dtype, device, seed=5).clone(device="cpu"))
    ref.run(reference)
    torch.testing.assert_close(pieces.param.cpu(), ref.param, rtol=8 * math_eps(dtype), atol=8 * math_eps(dtype))


@pytest.mark.parametrize("algorithm", ["sgd", "adamw"])
def test_k_pieces_that_disagree_are_refused(device, algorithm):
    op, _ = op_and_reference(algorithm)
    hyper, step = SGD_OPTIONS["no-momentum-wd"] if algorithm == "sgd" else ADAMW_OPTIONS["wd-first-step"]
    base = with_k_pieces(Call(algorithm, hyper, step, LENGTH, 3, torch.float32, device))
    uneven = base.clone()
    uneven.grads = uneven.grads[:-1]
    mismatched = base.clone()
    mismatched.grads[len(PIECE_SHAPES) + 2] = mismatched.grads[len(PIECE_SHAPES) + 2][:-1]  # objective 1, piece 2
    assert_refused(op, [(uneven, "same number of pieces for each"), (mismatched, "another objective's gradient")])
