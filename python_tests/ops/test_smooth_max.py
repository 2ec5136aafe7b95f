"""mimo_ext.smooth_max and SmoothMax against the float64 plain-PyTorch reference."""

from __future__ import annotations

import pytest
import torch

import mimo_ext
from python_tests.references import FLOAT_DTYPES, assert_within_reference_error, smooth_max_reference

SHAPES = [(1,), (3,), (7,), (5, 1), (4, 3), (2, 3, 6), (0, 3), (3, 33), (2, 1000)]


def random_losses(shape, dtype, device, scale=1.0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    # Rounded to the storage dtype first: the reference then sees exactly what the kernel sees.
    return (torch.randn(shape, generator=generator, dtype=torch.float64) * scale).to(dtype).to(device)


def check_against_reference(losses: torch.Tensor, mu: float) -> None:
    value, weights = mimo_ext.smooth_max(losses, mu)
    ref_value, ref_weights = smooth_max_reference(losses, mu)
    assert value.dtype == losses.dtype and weights.dtype == losses.dtype
    assert value.device == losses.device and weights.device == losses.device
    magnitude = losses.detach().abs().max().item() if losses.numel() else 0.0
    # value = m + mu * log(sum): error scales with |m| and with mu * log M.
    assert_within_reference_error(value, ref_value, scale=magnitude + mu * 8, terms=8)
    assert_within_reference_error(weights, ref_weights, scale=1.0, terms=8 + losses.shape[-1])


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(device, dtype, shape):
    for mu in (0.1, 1.0, 7.5):
        check_against_reference(random_losses(shape, dtype, device), mu)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("scale, mu", [(1e4, 1.0), (1e4, 1e-3), (3e4, 1e-6), (1.0, 1e-4)])
def test_large_ratio_does_not_overflow(device, dtype, scale, mu):
    # |l / mu| up to 3e10: a naive exp(l / mu) overflows in every dtype. (Scale kept inside float16's range.)
    losses = random_losses((6, 5), dtype, device, scale=min(scale, torch.finfo(dtype).max / 8))
    value, weights = mimo_ext.smooth_max(losses, mu)
    assert torch.isfinite(value).all() and torch.isfinite(weights).all()
    check_against_reference(losses, mu)


def test_non_contiguous_input(device):
    losses = random_losses((5, 8), torch.float32, device)[:, ::2]
    assert not losses.is_contiguous()
    check_against_reference(losses, 0.3)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_single_modality_is_identity(device, dtype):
    losses = random_losses((4, 1), dtype, device)
    value, weights = mimo_ext.smooth_max(losses, 0.5)
    assert torch.equal(value, losses[:, 0])
    assert torch.equal(weights, torch.ones_like(losses))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_tiny_mu_gives_hard_max_with_ties_shared(device, dtype):
    losses = torch.tensor([[0.5, 2.0, 2.0, -1.0], [3.0, 1.0, 0.0, 2.0]], dtype=dtype, device=device)
    # 1e-60 underflows to 0 in float32 math: the kernels must still give the limit, not 0 / 0.
    for mu in (1e-30, 1e-60):
        value, weights = mimo_ext.smooth_max(losses, mu)
        assert torch.equal(value.cpu(), torch.tensor([2.0, 3.0], dtype=dtype))
        expected = torch.tensor([[0.0, 0.5, 0.5, 0.0], [1.0, 0.0, 0.0, 0.0]], dtype=dtype)
        assert torch.equal(weights.cpu(), expected)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_huge_mu_gives_uniform_weights(device, dtype):
    losses = random_losses((3, 4), dtype, device)
    _, weights = mimo_ext.smooth_max(losses, 1e30)
    assert torch.allclose(weights.double().cpu(), torch.full((3, 4), 0.25, dtype=torch.float64))
    # A finite double mu beyond float32's range is clamped, not turned into Inf (M = 1: value stays finite).
    value, _ = mimo_ext.smooth_max(losses[:, :1], 1e300)
    assert torch.equal(value, losses[:, 0])


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_loss_makes_its_row_nan(device, dtype, bad):
    losses = random_losses((3, 4), dtype, device)
    losses[1, 2] = bad
    value, weights = mimo_ext.smooth_max(losses, 0.5)
    assert value[1].isnan() and weights[1].isnan().all()
    # Other rows are untouched by the bad one.
    check_against_reference(losses[[0, 2]], 0.5)
    assert torch.equal(value[[0, 2]], mimo_ext.smooth_max(losses[[0, 2]], 0.5)[0])


# Shapes that cross the CPU kernel's blocks (2048 losses), its parallel tasks (about 32k losses), fill its scratch
# exactly (M = 1: 2048 rows a block; a row of 2048) or need one of their own (rows longer than a block), with
# non-finite rows in several blocks among the finite ones.
BLOCKED_SHAPES = [(30001, 3), (2731, 7), (5000, 1), (3, 2048), (3, 2049), (2, 5000)]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("shape", BLOCKED_SHAPES, ids=str)
def test_many_rows_and_long_rows_match_reference(device, dtype, shape):
    rows, m = shape
    losses = random_losses(shape, dtype, device, scale=2.0)
    magnitude = losses.abs().max().item()
    bad_rows = list(range(0, rows, max(1, rows // 7)))
    for j, r in enumerate(bad_rows):
        losses[r, (5 * j) % m] = (float("nan"), float("inf"), float("-inf"))[j % 3]
    for mu in (0.1, 3.0):
        value, weights = mimo_ext.smooth_max(losses, mu)
        ref_value, ref_weights = smooth_max_reference(losses, mu)
        assert ref_value.isnan().sum().item() == len(bad_rows)
        assert_within_reference_error(value, ref_value, scale=magnitude + mu * 8, terms=8)
        assert_within_reference_error(weights, ref_weights, scale=1.0, terms=8 + m)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_small_weights_are_relatively_accurate(device, dtype):
    # The absolute tolerance above cannot see a weight of 1e-30 being wrong (an exp whose tail is 0, or mis-scaled
    # in the subnormal range): compare every weight above the smallest normal number relatively. d = l_i - max
    # reaches -95 mu here; the weight's relative error is then bounded by the rounding of d / mu (|d / mu| eps)
    # plus a few roundings of the sum and the quotient.
    mu = 0.1
    spread = torch.linspace(0.0, -9.5, 41, dtype=torch.float64)
    losses = torch.stack([spread, spread.flip(0) + 3.0, spread * 0.37]).to(dtype).to(device)
    _, weights = mimo_ext.smooth_max(losses, mu)
    _, ref = smooth_max_reference(losses, mu)
    got = weights.to(torch.float64).cpu()
    eps = torch.finfo(dtype).eps
    d_over_mu = (losses - losses.max(-1, keepdim=True).values).abs().to(torch.float64).cpu() / mu
    normal = ref > torch.finfo(dtype).tiny
    if dtype == torch.float32:
        assert ref[normal].min() < 1e-35  # down to float32's smallest normal numbers
    else:
        assert normal.all()
    relative = ((got - ref).abs() / ref)[normal]
    bound = ((d_over_mu + 8) * 2 * eps)[normal]
    worst = (relative / bound).argmax()
    message = f"relative error {relative[worst].item():.3e} where the bound is {bound[worst].item():.3e}"
    assert (relative <= bound).all(), message


def test_weights_sum_to_one(device):
    losses = random_losses((64, 6), torch.float32, device, scale=3.0)
    _, weights = mimo_ext.smooth_max(losses, 0.2)
    assert torch.allclose(weights.sum(-1), torch.ones(64, device=device), atol=1e-6)


@pytest.mark.parametrize("mu", [0.3, 2.0])
@pytest.mark.parametrize("shape", [(5,), (3, 4), (2, 2, 40)], ids=str)
def test_gradcheck_of_the_value(device, mu, shape):
    losses = random_losses(shape, torch.float64, device).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: mimo_ext.smooth_max(x, mu)[0], (losses,))
    assert torch.autograd.gradcheck(lambda x: mimo_ext.SmoothMax.apply(x, mu)[0], (losses,))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("entry", ["smooth_max", "SmoothMax"])
def test_gradient_is_weights_times_upstream(device, dtype, entry):
    losses = random_losses((4, 3), dtype, device).requires_grad_()
    upstream = random_losses((4,), dtype, device, seed=1)
    forward = mimo_ext.smooth_max if entry == "smooth_max" else mimo_ext.SmoothMax.apply
    value, weights = forward(losses, 0.4)
    assert not weights.requires_grad
    (grad,) = torch.autograd.grad(value, losses, upstream)
    _, ref_weights = smooth_max_reference(losses, 0.4)
    expected = ref_weights * upstream.double().cpu()[:, None]
    assert grad.dtype == dtype
    assert_within_reference_error(grad, expected, scale=upstream.abs().max().item(), terms=16)


@pytest.mark.parametrize("entry", ["smooth_max", "SmoothMax"])
def test_second_derivative_is_refused(device, entry):
    losses = random_losses((3,), torch.float64, device).requires_grad_()
    forward = mimo_ext.smooth_max if entry == "smooth_max" else mimo_ext.SmoothMax.apply
    value, _ = forward(losses, 0.5)
    (grad,) = torch.autograd.grad(value, losses, create_graph=True)
    with pytest.raises(RuntimeError, match="first-order gradients only"):
        grad.sum().backward()


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_opcheck_of_smooth_max_and_its_backward(device, dtype):
    losses = random_losses((3, 4), dtype, device)
    torch.library.opcheck(torch.ops.mimo_ext.smooth_max.default, (losses, 0.5))
    torch.library.opcheck(torch.ops.mimo_ext.smooth_max.default, (losses.clone().requires_grad_(), 0.5))
    weights = mimo_ext.smooth_max(losses, 0.5)[1]
    torch.library.opcheck(torch.ops.mimo_ext.smooth_max_backward.default, (losses[:, 0].clone(), weights))


@pytest.mark.parametrize(
    "losses, mu, error, match",
    [
        (torch.zeros(3), 0.0, ValueError, "mu must be finite and > 0"),
        (torch.zeros(3), -1.0, ValueError, "mu must be finite and > 0"),
        (torch.zeros(3), float("nan"), ValueError, "mu must be finite and > 0"),
        (torch.zeros(3), float("inf"), ValueError, "mu must be finite and > 0"),
        (torch.zeros(3, dtype=torch.int64), 1.0, TypeError, "losses must be float32, float64, float16 or bfloat16"),
        (torch.zeros(3, dtype=torch.bool), 1.0, TypeError, "losses must be float32"),
        (torch.tensor(1.0), 1.0, ValueError, "losses must have at least 1 dimension"),
        (torch.zeros(2, 0), 1.0, ValueError, "losses must have M >= 1"),
        (torch.zeros(3), torch.tensor(1.0), TypeError, "mu must be a Python float"),
    ],
    ids=["mu=0", "mu<0", "mu=nan", "mu=inf", "int64", "bool", "0-dim", "M=0", "tensor-mu"],
)
def test_bad_input_raises_naming_the_argument(device, losses, mu, error, match):
    with pytest.raises(error, match=match):
        mimo_ext.smooth_max(losses.to(device), mu)


# ---- CUDA graphs and devices


def test_cuda_graph_capture_of_smooth_max_and_its_backward(cuda_device):
    # Short rows (a thread per row) and long rows (a warp per row), the forward and the backward op, captured in one
    # graph, replayed with new losses copied into the static tensors: the eager calls' bits and the reference each time.
    device = cuda_device
    mu = 0.3
    static = [torch.zeros(shape, device=device) for shape in [(64, 5), (8, 100)]]
    upstream = [torch.zeros(shape[:1], device=device) for shape in [(64, 5), (8, 100)]]

    def fill(step):
        generator = torch.Generator().manual_seed(step)
        for t in [*static, *upstream]:
            t.copy_(torch.randn(t.shape, generator=generator, dtype=torch.float64) * 2)

    def ops(losses, grads):
        out = []
        for rows, g in zip(losses, grads, strict=True):
            value, weights = mimo_ext.smooth_max(rows, mu)
            out += [value, weights, torch.ops.mimo_ext.smooth_max_backward.default(g, weights)]
        return out

    fill(0)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            ops(static, upstream)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = ops(static, upstream)
    for step in range(1, 5):
        fill(step)
        graph.replay()
        torch.cuda.synchronize()
        eager = ops([t.clone() for t in static], [t.clone() for t in upstream])
        for i, (got, want) in enumerate(zip(captured, eager, strict=True)):
            assert torch.equal(got, want), f"replay {step}: output {i} differs from the eager call"
        for j, losses in enumerate(static):
            value, weights, grad = captured[3 * j : 3 * j + 3]
            ref_value, ref_weights = smooth_max_reference(losses, mu)
            magnitude = losses.abs().max().item()
            assert_within_reference_error(value, ref_value, scale=magnitude + mu * 8, terms=8)
            assert_within_reference_error(weights, ref_weights, scale=1.0, terms=8 + losses.shape[-1])
            expected = ref_weights * upstream[j].double().cpu()[:, None]
            assert_within_reference_error(grad, expected, scale=upstream[j].abs().max().item(), terms=16)


@pytest.mark.parametrize("moved", ["grad_value", "weights"])
def test_cpu_tensor_in_a_cuda_backward_is_rejected(cuda_device, moved):
    # smooth_max's only tensor is its input; its backward op takes two, which must be on one device.
    weights = mimo_ext.smooth_max(random_losses((4, 3), torch.float32, cuda_device), 0.5)[1]
    grad_value = random_losses((4,), torch.float32, cuda_device, seed=1)
    if moved == "grad_value":
        grad_value, match = grad_value.cpu(), r"grad_value is on cpu but weights is on cuda:0"
    else:
        weights, match = weights.cpu(), r"grad_value is on cuda:0 but weights is on cpu"
    with pytest.raises(ValueError, match=match):
        torch.ops.mimo_ext.smooth_max_backward.default(grad_value, weights)
