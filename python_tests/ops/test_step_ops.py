"""The fused step operators mimo_ext::sgd_step_ and mimo_ext::adamw_step_ against their plain-PyTorch references
(mimo_ext.optim.sgd_step_reference / adamw_step_reference) on random flat buffers, opcheck, found_inf, which kernel
runs on which device, misaligned buffers, buffers beyond one pass of the CUDA grid and CUDA graph capture."""

from __future__ import annotations

import inspect

import pytest
import torch

import mimo_ext
from mimo_ext.optim import adamw_step_reference, sgd_step_reference
from python_tests.ops.calls import (
    ADAMW_OPTIONS,
    SCALING,
    SGD_OPTIONS,
    Call,
    call_with,
    check_step_against_reference,
    op_and_reference,
    split_arguments,
    state_count,
    used_states,
    with_offsets,
)
from python_tests.optim_helpers import assert_bit_identical, threads
from python_tests.references import FLOAT_DTYPES, assert_within_reference_error, math_eps, statistics_tolerance

LENGTHS = [0, 1, 7, 1000]
KS = [1, 2, 3, 4]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one intra-op thread for tiny tensors


@pytest.mark.parametrize("scaling", SCALING, ids=lambda s: f"scale={s[0]}-found_inf={s[1]}")
@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize(
    "algorithm, options",
    [pytest.param("sgd", o, id=f"sgd-{name}") for name, o in SGD_OPTIONS.items()]
    + [pytest.param("adamw", o, id=f"adamw-{name}") for name, o in ADAMW_OPTIONS.items()],
)
def test_op_matches_reference(device, algorithm, options, dtype, n, scaling):
    op, reference = op_and_reference(algorithm)
    hyper, step = options
    grad_scale, found_inf = scaling
    skipped = found_inf == 1.0
    for k in KS:
        call = Call(algorithm, hyper, step, n, k, dtype, device, grad_scale, found_inf, seed=k)
        before = [t.clone() for t in call.tensors()]
        ref = call.clone(device="cpu")
        truth = call.clone(dtype=torch.float64, device="cpu")
        stats = call.run(op)
        ref_stats = ref.run(reference)
        truth_stats = truth.run(reference)

        acc = torch.float64 if dtype == torch.float64 else torch.float32
        assert stats.dtype == acc and stats.shape == (2 * k,) and stats.device == call.param.device
        # The gradient buffers, coefficients and lr are only read.
        assert_bit_identical(before[2 + len(call.states) :], call.tensors()[2 + len(call.states) :])
        used = used_states(algorithm, hyper)
        for s in range(len(call.states)):
            if s not in used:
                assert torch.equal(call.states[s], before[1 + s]), f"unused state {s} was written"
        if skipped:
            # found_inf set: nothing at all is written, and the statistics are zeros.
            assert_bit_identical(before, call.tensors())
            assert torch.equal(stats.cpu(), torch.zeros(2 * k, dtype=acc))
            continue
        assert call.step.item() == step + 1
        what = f"K={k}"
        assert_within_reference_error(call.param.cpu(), truth.param, ref.param, what=f"{what} param")
        for s in used:
            assert_within_reference_error(call.states[s].cpu(), truth.states[s], ref.states[s], what=f"{what} s{s}")
        # Statistics of the raw (unscaled) gradient buffers and of the blend, against float64.
        assert ref_stats.shape == stats.shape
        error = (stats.cpu().double() - truth_stats).abs()
        tolerance = statistics_tolerance(truth.grads, truth.coefficients, truth.grad_scale, dtype)
        assert (error <= tolerance).all(), (stats, truth_stats, tolerance)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("algorithm", ["sgd", "adamw"])
def test_op_several_chunks(device, algorithm, dtype):
    # Longer than one CPU chunk (16 K elements): the statistics are summed over chunks.
    n = 2 * 16384 + 5
    op, reference = op_and_reference(algorithm)
    hyper, step = (SGD_OPTIONS if algorithm == "sgd" else ADAMW_OPTIONS)[
        "momentum-dampening-wd-maximize" if algorithm == "sgd" else "amsgrad-maximize"
    ]
    call = Call(algorithm, hyper, step, n, 3, dtype, device, 1024.0, 0.0)
    ref, truth = call.clone(device="cpu"), call.clone(dtype=torch.float64, device="cpu")
    stats = call.run(op)
    ref.run(reference)
    truth_stats = truth.run(reference)
    assert_within_reference_error(call.param.cpu(), truth.param, ref.param, what="param")
    for s in used_states(algorithm, hyper):
        assert_within_reference_error(call.states[s].cpu(), truth.states[s], ref.states[s], what=f"state {s}")
    tolerance = statistics_tolerance(truth.grads, truth.coefficients, truth.grad_scale, dtype)
    assert ((stats.cpu().double() - truth_stats).abs() <= tolerance).all()
    # Deterministic: the same inputs give bit-identical outputs.
    again = Call(algorithm, hyper, step, n, 3, dtype, device, 1024.0, 0.0)
    assert torch.equal(again.run(op), stats)
    assert_bit_identical([call.param, *call.states], [again.param, *again.states])


@pytest.mark.parametrize("algorithm", ["sgd", "adamw"])
def test_op_does_not_depend_on_the_thread_count(algorithm):
    # The CPU kernel splits the buffers into chunks spread over threads and sums the statistics in chunk order.
    n = 3 * 16384 + 7
    op, _ = op_and_reference(algorithm)
    hyper, step = (SGD_OPTIONS if algorithm == "sgd" else ADAMW_OPTIONS)[
        "momentum-dampening-wd-maximize" if algorithm == "sgd" else "amsgrad-maximize"
    ]
    results = []
    for count in (1, 2):
        call = Call(algorithm, hyper, step, n, 3, torch.float32, "cpu", 1024.0, 0.0)
        with threads(count):
            stats = call.run(op)
        results.append([stats, call.param, *call.states, call.step])
    assert_bit_identical(results[0], results[1])


@pytest.mark.parametrize("algorithm", ["sgd", "adamw"])
def test_compute_stats_false_returns_empty_and_same_update(device, algorithm):
    op, _ = op_and_reference(algorithm)
    hyper, step = next(iter((SGD_OPTIONS if algorithm == "sgd" else ADAMW_OPTIONS).values()))
    with_stats = Call(algorithm, hyper, step, 33, 3, torch.float32, device)
    without = with_stats.clone()
    assert with_stats.run(op, True).shape == (6,)
    empty = without.run(op, False)
    assert empty.shape == (0,) and empty.dtype == torch.float32
    assert_bit_identical(with_stats.tensors(), without.tensors())


def test_sixteen_grads_are_accepted(device):
    op, reference = op_and_reference("adamw")
    hyper, step = ADAMW_OPTIONS["amsgrad-maximize"]
    call = Call("adamw", hyper, step, 11, 16, torch.float32, device)
    ref, truth = call.clone(device="cpu"), call.clone(dtype=torch.float64, device="cpu")
    call.run(op)
    ref.run(reference)
    truth.run(reference)
    assert_within_reference_error(call.param.cpu(), truth.param, ref.param, what="param")


@pytest.mark.parametrize("beta2", [0.999, 0.9999])
def test_adamw_beta2_close_to_one_in_float32(device, beta2):
    # One step from zero state: exp_avg_sq = (1 - beta2) * g^2 exactly up to float32 rounding.
    n = 64
    hyper = dict(beta1=0.9, beta2=beta2, eps=1e-8, weight_decay=0.0, amsgrad=False, maximize=False)
    call = Call("adamw", hyper, 0.0, n, 1, torch.float32, device)
    call.states[1].zero_()
    call.run(torch.ops.mimo_ext.adamw_step_.default)
    expected = (1 - beta2) * call.grads[0].double().cpu() ** 2
    torch.testing.assert_close(call.states[1].cpu().double(), expected, rtol=4 * math_eps(torch.float32), atol=0)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("scaling", [(None, None), (1024.0, 0.0), (4.0, 1.0)], ids=["plain", "scaled", "skipped"])
@pytest.mark.parametrize("algorithm", ["sgd", "adamw"])
def test_opcheck_of_the_step_op(device, algorithm, scaling, dtype):
    hyper, step = (SGD_OPTIONS if algorithm == "sgd" else ADAMW_OPTIONS)[
        "momentum-dampening-wd-maximize" if algorithm == "sgd" else "amsgrad-maximize"
    ]
    call = Call(algorithm, hyper, step, 37, 3, dtype, device, *scaling)
    op, _ = op_and_reference(algorithm)
    # opcheck runs the op on clones of the inputs several times (schema, fake tensors, AOT dispatch) and compares
    # the outputs (the statistics) and the mutated inputs between runs.
    torch.library.opcheck(op, *split_arguments(call.arguments(compute_stats=True)))


# ---- one signature for the op, its wrapper, its reference and its fake; which kernel runs on which device

STEP_FUNCTIONS = {
    "sgd": [mimo_ext.ops.sgd_step_, sgd_step_reference, mimo_ext.ops._sgd_step_fake],
    "adamw": [mimo_ext.ops.adamw_step_, adamw_step_reference, mimo_ext.ops._adamw_step_fake],
}


@pytest.mark.parametrize("algorithm", ["sgd", "adamw"])
def test_wrapper_reference_and_fake_take_the_schema_arguments(algorithm):
    # The dispatcher hands a Python kernel (the reference, the fake) the keyword-only arguments by name and leaves
    # out those at their default: another name, kind or default would fail, or silently run with another value.
    op, _ = op_and_reference(algorithm)
    empty = inspect.Parameter.empty
    schema = [(a.name, a.kwarg_only, a.default_value if a.has_default_value() else empty) for a in op._schema.arguments]
    assert [name for name, kwarg_only, _ in schema if kwarg_only][0] == "grad_scale"
    for fn in STEP_FUNCTIONS[algorithm]:
        parameters = inspect.signature(fn).parameters.values()
        assert [(p.name, p.kind == p.KEYWORD_ONLY, p.default) for p in parameters] == schema, fn.__qualname__


@pytest.mark.parametrize("algorithm", ["sgd", "adamw"])
def test_the_wrapper_calls_the_op(device, algorithm):
    op, _ = op_and_reference(algorithm)
    hyper, step = (SGD_OPTIONS if algorithm == "sgd" else ADAMW_OPTIONS)[
        "momentum-dampening-wd-maximize" if algorithm == "sgd" else "amsgrad-maximize"
    ]
    call = Call(algorithm, hyper, step, 37, 3, torch.float32, device, 1024.0, 0.0)
    twin = call.clone()
    stats = call.run(STEP_FUNCTIONS[algorithm][0])
    assert_bit_identical([stats, *call.tensors()], [twin.run(op), *twin.tensors()])


@pytest.mark.parametrize("algorithm", ["sgd", "adamw"])
def test_compiled_kernels_on_cpu_and_cuda_the_reference_on_other_devices(algorithm):
    # The references are the ops' CompositeExplicitAutograd kernels (mimo_ext/optim/reference.py); the dispatcher
    # prefers a backend's own kernel, so CPU and CUDA keep the compiled ones and meta tensors the fake.
    name = f"mimo_ext::{algorithm}_step_"
    op, reference = op_and_reference(algorithm)
    assert torch._C._dispatch_has_kernel_for_dispatch_key(name, "CompositeExplicitAutograd")
    table = dict(line.split(": ", 1) for line in torch._C._dispatch_dump_table(name).splitlines() if ": " in line)
    assert table["CPU"].endswith("[kernel]") and f"csrc/cpu/{algorithm}_step_cpu.cpp" in table["CPU"]
    if mimo_ext._library.built_with_cuda():
        assert table["CUDA"].endswith("[kernel]") and f"csrc/cuda/{algorithm}_step_cuda.cu" in table["CUDA"]
    assert table["Meta"].endswith("[kernel]") and "default backend kernel" not in table["Meta"]
    for key in ("XPU", "MPS", "PrivateUse1"):
        assert table[key].endswith("[default backend kernel]"), (key, table[key])

    hyper, step = (SGD_OPTIONS if algorithm == "sgd" else ADAMW_OPTIONS)[
        "momentum-dampening-wd-maximize" if algorithm == "sgd" else "amsgrad-maximize"
    ]
    call = Call(algorithm, hyper, step, 37, 3, torch.float32, "cpu", 1024.0, 0.0)
    # The XPU entry, as a call on XPU tensors would take it (on CPU tensors here): the reference's results.
    twin = call.clone()
    args, kwargs = split_arguments(call.arguments())
    stats = op.redispatch(torch._C.DispatchKeySet(torch._C.DispatchKey.XPU), *args, **kwargs)
    assert_bit_identical([stats, *call.tensors()], [twin.run(reference), *twin.tensors()])
    # A bad lr: the CPU entry's compiled kernel refuses it by name; the reference fails inside torch.
    args, kwargs = split_arguments({**call.arguments(), "lr": torch.ones(2)})
    with pytest.raises(ValueError, match=f"mimo_ext.{algorithm}_step_: lr must hold a single value"):
        op(*args, **kwargs)
    with pytest.raises(RuntimeError, match="invalid for input of size 2"):
        op.redispatch(torch._C.DispatchKeySet(torch._C.DispatchKey.XPU), *args, **kwargs)
    # Meta tensors: the fake (the reference would read found_inf on the host, which a meta tensor cannot give).
    meta = {k: v.to("meta") if isinstance(v, torch.Tensor) else v for k, v in call.arguments().items()}
    meta["grads"] = [g.to("meta") for g in call.grads]
    stats = call_with(op, meta)
    assert stats.device.type == "meta" and stats.shape == (6,)


# ---- alignment: buffers that start 1..3 elements into their storage take the element-wise path


# Element offsets of (param, states, grads), K = 3, per pattern, for an offset o in 1..3.
STEP_ALIGNMENT_PATTERNS = {
    "all": lambda o, s: (o, [o] * s, [o, o, o]),
    "param-only": lambda o, s: (o, [0] * s, [0, 0, 0]),
    "one-grad": lambda o, s: (0, [0] * s, [0, o, 0]),
    "last-state": lambda o, s: (0, [0] * (s - 1) + [o], [0, 0, 0]),
    "mixed": lambda o, s: (0, [(o + j) % 4 for j in range(s)], [o, 0, (o % 3) + 1]),
}


STEP_CASES = [
    pytest.param("sgd", SGD_OPTIONS["momentum-dampening-wd-maximize"], id="sgd"),
    pytest.param("adamw", ADAMW_OPTIONS["amsgrad-maximize"], id="adamw-amsgrad"),
]


@pytest.mark.parametrize("pattern", STEP_ALIGNMENT_PATTERNS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("algorithm, options", STEP_CASES)
def test_op_misaligned_and_mixed_alignment(device, algorithm, options, dtype, pattern):
    # The vector path (16 bytes of every buffer per thread and step on CUDA) needs every buffer aligned; one
    # misaligned buffer sends the call down the element-wise path. Offsets of 1..3 elements; those that are a
    # multiple of 16 bytes (2 float64) are aligned and skipped. K = 3, statistics on, grad_scale and found_inf = 0.
    op, reference = op_and_reference(algorithm)
    hyper, step = options
    itemsize = torch.finfo(dtype).bits // 8
    for offset in (1, 2, 3):
        param_offset, state_offsets, grad_offsets = STEP_ALIGNMENT_PATTERNS[pattern](offset, state_count(algorithm))
        offsets = [param_offset, *state_offsets, *grad_offsets]
        if all(o * itemsize % 16 == 0 for o in offsets):
            continue
        for n in (37, 4099):
            call = Call(algorithm, hyper, step, n, 3, dtype, device, 1024.0, 0.0, seed=offset)
            call = with_offsets(call, param_offset, state_offsets, grad_offsets)
            buffers = [call.param, *call.states, *call.grads]
            assert [t.data_ptr() % 16 != 0 for t in buffers] == [o * itemsize % 16 != 0 for o in offsets]
            check_step_against_reference(call, op, reference, algorithm, hyper, step, n)


# ---- beyond one pass of the grid

# The CUDA kernel loops over the buffers with a grid of at most one wave (#SMs x at most 2048 resident threads, in
# blocks of 256), 16 bytes per thread and pass (4 floats, 8 halves): at most about 1.1M floats per pass on a 132-SM
# GPU. 2**22 + 7 elements take several passes, sum the
# statistics over many threads and blocks, and leave an odd tail.
BEYOND_ONE_PASS = (1 << 22) + 7


def beyond_one_pass_cases(device):
    """(dtype, offset) cases: on the CPU float32 only (no grid there; keeps the run short); on CUDA every dtype,
    aligned, and float32 also through the element-wise path (every buffer at offset 1)."""
    if device != "cuda":
        return [(torch.float32, 0)]
    return [(dtype, 0) for dtype in FLOAT_DTYPES] + [(torch.float32, 1)]


@pytest.mark.gpu_slow  # every dtype over a buffer of several grid passes on CUDA
@pytest.mark.parametrize("algorithm, options", STEP_CASES)
def test_op_beyond_one_grid_pass(device, algorithm, options):
    op, reference = op_and_reference(algorithm)
    hyper, step = options
    n = BEYOND_ONE_PASS
    for dtype, offset in beyond_one_pass_cases(device):
        call = Call(algorithm, hyper, step, n, 3, dtype, device, 1024.0, 0.0, seed=11)
        if offset:
            call = with_offsets(call, offset, [offset] * len(call.states), [offset] * 3)
        check_step_against_reference(call, op, reference, algorithm, hyper, step, n)


# ---- CUDA graphs


@pytest.mark.parametrize("algorithm, options", STEP_CASES)
def test_cuda_graph_capture_of_the_step_op(cuda_device, algorithm, options):
    # K = 3, statistics on, grad_scale and found_inf given, all read on the device: the op is captured once and
    # replayed with new gradients (and a new lr) copied into the static tensors, found_inf 0 (a step) and 1 (a skipped
    # step: nothing written, statistics zero, the count unchanged). An eager twin fed the same values must agree bit
    # for bit after every replay, and each step is checked against the reference.
    device = cuda_device
    op, reference = op_and_reference(algorithm)
    hyper, step = options
    n = 4099
    static = Call(algorithm, hyper, step, n, 3, torch.float32, device, 1024.0, 0.0, seed=3)
    initial = static.clone()

    def reset(call, source):
        written, values = [call.param, *call.states, call.step], [source.param, *source.states, source.step]
        for dst, src in zip(written, values, strict=True):
            dst.copy_(src)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            static.run(op)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured_stats = static.run(op)
    reset(static, initial)  # warm-up steps undone: the replays start where the eager twin starts
    eager = initial.clone()
    steps_taken = 0
    for replay, found_inf in enumerate([0.0, 1.0, 0.0, 0.0, 1.0, 0.0]):
        generator = torch.Generator().manual_seed(100 + replay)
        for g in static.grads:
            g.copy_(1024.0 * torch.randn(n, generator=generator, dtype=torch.float64))
        if replay == 3:
            static.lr.fill_(0.01)
        static.found_inf.fill_(found_inf)
        eager.grads = [g.clone() for g in static.grads]
        eager.lr, eager.found_inf = static.lr.clone(), static.found_inf.clone()
        before = [t.clone() for t in static.tensors()]
        ref, truth = static.clone(device="cpu"), static.clone(dtype=torch.float64, device="cpu")
        graph.replay()
        eager_stats = eager.run(op)
        torch.cuda.synchronize()
        what = f"replay {replay} (found_inf {found_inf})"
        assert torch.equal(captured_stats, eager_stats), what
        assert_bit_identical([static.param, *static.states, static.step], [eager.param, *eager.states, eager.step])
        if found_inf:
            assert_bit_identical(before, static.tensors())
            assert torch.equal(captured_stats.cpu(), torch.zeros(6))
            continue
        steps_taken += 1
        ref.run(reference)
        truth_stats = truth.run(reference)
        assert_within_reference_error(static.param.cpu(), truth.param, ref.param, what=f"{what} param")
        for s in used_states(algorithm, hyper):
            assert_within_reference_error(static.states[s].cpu(), truth.states[s], ref.states[s], what=f"{what} {s}")
        tolerance = statistics_tolerance(truth.grads, truth.coefficients, truth.grad_scale, torch.float32)
        assert ((captured_stats.cpu().double() - truth_stats).abs() <= tolerance).all(), what
    assert static.step.item() == step + steps_taken == step + 4
