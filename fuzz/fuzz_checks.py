"""Fuzzing of mimo_ext's argument checking, with atheris over the Python API.

Every input is turned into one call of a public entry point (``torch.ops.mimo_ext.<op>`` or
``torch.ops.mimo_ext.<op>.default`` for smooth_max, smooth_max_backward, blend, blend_, sgd_step_ and adamw_step_,
or the wrappers ``mimo_ext.smooth_max`` / ``blend`` / ``blend_``) with a random argument tuple: usually a valid
call with 0 to 3 mutations (another dtype, device ('cpu' or 'meta'), length, rank, stride, storage offset,
overlapping strides, list length or container, requires_grad, a NaN/Inf/huge/tiny/denormal scalar or tensor
value, a wrong Python type, two arguments made to share memory, ...). Then:

* a call that raises must raise RuntimeError, ValueError, TypeError or IndexError (NotImplementedError is a
  RuntimeError) with a non-empty message that names the op or one of its arguments and is not an internal assert;
  and every input tensor must be bit-identical afterwards (nothing half-written);
* a call that succeeds on CPU tensors must match a plain-PyTorch float64 reference (for the steps,
  mimo_ext.optim.*_step_reference on float64 copies) within the tolerance rule the tests use
  (python_tests/references.py, its references too: twice the error of the same reference computed in the
  storage dtype, plus roundings; where that reference overflows, no judgement), must leave its read-only inputs and the
  state buffers its options do not use bit-identical, must not be a call the reference itself cannot compute, and
  must not have been given a written argument that shares memory with another argument (outputs aliasing inputs
  must be rejected; the one documented exception is ``blend_`` with ``base`` itself among the grads);
* a call on meta tensors that succeeds must give the shapes and dtypes the CPU kernel gives for the same call,
  whenever the CPU kernel accepts it (the fake implementations check devices only, so they accept more).

A crash (segfault, abort, sanitizer report) is caught by libFuzzer. A failure prints the call (with the values
before the call) and raises, and libFuzzer saves the input (``crash-<sha1>``, or under -artifact_prefix);
``python fuzz/fuzz_checks.py <that file>`` replays it. Known issues (found by this fuzzer and reported, not fixed
yet: KNOWN_ISSUES below) are counted and listed in the summary instead of failing; ``--strict`` fails on them too.

Usage (other arguments go to libFuzzer: a corpus folder, -runs=N, -seed=N, -artifact_prefix=...):
    python fuzz/fuzz_checks.py --seconds 60 [corpus/]
    python fuzz/fuzz_checks.py --keep-going --seconds 600    # list every kind of finding, not just the first
    LD_PRELOAD="<libasan.so> <libubsan.so>" ASAN_OPTIONS=detect_leaks=0 \
        python fuzz/fuzz_checks.py --library build/asan/libmimo_ext_ops.so --seconds 60   # the ASan build's ops
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import random
import sys
import time
import types
import warnings
from collections import Counter
from pathlib import Path

import atheris

# The checkout's own package (fuzz/ is one level below the repository root), whatever else is installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402  (not instrumented: coverage is collected over mimo_ext's Python layer and this file)

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--library", help="load the ops from this shared library instead of mimo_ext/_C*.so")
parser.add_argument("--strict", action="store_true", help="known issues fail too")
parser.add_argument("--verbose", action="store_true", help="print every call")
parser.add_argument("--keep-going", action="store_true", help="print the first call of each new finding and go on")
parser.add_argument("--seconds", type=float, help="stop after this long, print the summary, exit (1 on findings)")
OPTIONS, LIBFUZZER_ARGS = parser.parse_known_args()
ARTIFACT_PREFIX = next((a.split("=", 1)[1] for a in LIBFUZZER_ARGS if a.startswith("-artifact_prefix=")), "./")

if OPTIONS.library:
    # mimo_ext/__init__ loads its compiled library through mimo_ext._library.load(); a module put in its place
    # loads the given one instead (e.g. the ASan build), and the Python layer on top is the package's own.
    library = str(Path(OPTIONS.library).resolve())
    stub = types.ModuleType("mimo_ext._library")
    stub.load = lambda: torch.ops.load_library(library)
    stub.built_with_cuda = lambda: False
    sys.modules["mimo_ext._library"] = stub

with atheris.instrument_imports(include=["mimo_ext"]):
    import mimo_ext
    from mimo_ext.optim import adamw_step_reference, sgd_step_reference
    from mimo_ext.optim.reference import _whole as whole_grads  # grads in pieces joined into K buffers

from python_tests.references import (  # noqa: E402  (the references and the tolerance rule of the tests)
    blend_reference,
    math_dtype,
    smooth_max_backward_reference,
    smooth_max_reference,
    within_reference_error,
)

torch.set_num_threads(1)
# The odd inputs make torch warn now and then (a complex tensor cast to real in a reference, ...): not findings.
warnings.filterwarnings("ignore", category=UserWarning)

FLOATS = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
OTHER_DTYPES = [torch.int64, torch.int32, torch.uint8, torch.bool, torch.complex64, torch.float8_e4m3fn]
ALLOWED_ERRORS = (RuntimeError, ValueError, TypeError, IndexError)
BAD_MESSAGES = ("INTERNAL ASSERT FAILED", "please report a bug", "Segmentation", "CHECK failed")
ARGUMENT_NAMES = {
    "smooth_max": ["losses", "mu"],
    "smooth_max_backward": ["grad_value", "weights"],
    "blend": ["base", "grads", "weights", "gamma"],
    "blend_": ["base", "grads", "weights", "gamma"],
    "sgd_step_": [
        "param", "momentum_buffer", "grads", "coefficients", "lr", "step", "grad_scale", "found_inf", "weight_decay",
        "momentum", "dampening", "nesterov", "maximize", "compute_stats",
    ],
    "adamw_step_": [
        "param", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "grads", "coefficients", "lr", "step", "grad_scale",
        "found_inf", "beta1", "beta2", "eps", "weight_decay", "amsgrad", "maximize", "compute_stats",
    ],
}  # fmt: skip


def invoke(fn, op: str, values: list):
    """Calls fn with the values of ARGUMENT_NAMES[op] as the schema takes them: positionally, except the step ops'
    keyword-only arguments (grad_scale on)."""
    names = ARGUMENT_NAMES[op]
    cut = names.index("grad_scale") if "grad_scale" in names else len(names)
    return fn(*values[:cut], **dict(zip(names[cut:], values[cut:], strict=True)))


STATS: Counter = Counter()


class Finding(AssertionError):
    """A call that breaks a rule. Its key, "<kind>:<op>" (for an accepted overlap "accepted-overlap:<op>:<written
    argument>~<other argument>"), identifies it in KNOWN_ISSUES and in the summary."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.key = kind


# ---- random values -----------------------------------------------------------------------------------------------


class Decisions:
    """The choices of one call: from the fuzzer's bytes while they last (so that libFuzzer's mutations steer them),
    then from a PRNG seeded with those bytes (so that short inputs still give varied calls). The same input gives
    the same call."""

    def __init__(self, data: bytes):
        self._fdp = atheris.FuzzedDataProvider(data)
        self._rng = random.Random(hashlib.sha1(data).digest())

    def ConsumeIntInRange(self, lo: int, hi: int) -> int:  # noqa: N802 - FuzzedDataProvider's name
        if self._fdp.remaining_bytes() > 0:
            return self._fdp.ConsumeIntInRange(lo, hi)
        return self._rng.randint(lo, hi)

    def ConsumeBool(self) -> bool:  # noqa: N802
        return self.ConsumeIntInRange(0, 1) == 1


def pick(fdp, items):
    return items[fdp.ConsumeIntInRange(0, len(items) - 1)]


def odd_scalar(fdp):
    """A float at or past the edges: NaN, +-Inf, 0, -0, denormal, huge, tiny, negative."""
    return pick(
        fdp,
        [
            math.nan,
            math.inf,
            -math.inf,
            0.0,
            -0.0,
            5e-324,
            1e-320,
            1e-45,
            1e-30,
            1e30,
            1e39,
            1e300,
            -1.0,
            -1e-8,
            1.0,
            3.4e38,
            65504.0,
            65520.0,
            0.5,
            1 - 2**-24,
            1 - 1e-17,
            2.0,
        ],
    )


def wrong_type(fdp):
    return pick(fdp, [None, "1.0", 1, True, [1.0], (1.0,), 1 + 2j, torch.tensor(1.0), object()])


def scalar(fdp, typical, odd_chance=12, *, floats_only=False):
    """A float hyperparameter: usually ``typical``, sometimes an edge value, rarely a wrong Python type."""
    r = fdp.ConsumeIntInRange(0, 99)
    if r < 100 - odd_chance:
        return typical
    if r < 99 or floats_only:
        return odd_scalar(fdp)
    return wrong_type(fdp)


def values(fdp, generator, n: int) -> torch.Tensor:
    """n float64 values: normal at a random scale, with some specials (NaN, Inf, 0, denormals, huge) injected."""
    scale = 10.0 ** pick(fdp, [0, 0, 0, 0, -1, 1, -3, 3, -8, 8, -30, 30, -300, 300])
    v = torch.randn(n, generator=generator, dtype=torch.float64) * scale
    if n and fdp.ConsumeIntInRange(0, 9) == 0:
        specials = torch.tensor([math.nan, math.inf, -math.inf, 0.0, -0.0, 5e-324, 1e38, -1e38, 7e4], dtype=v.dtype)
        for _ in range(fdp.ConsumeIntInRange(1, 3)):
            v[fdp.ConsumeIntInRange(0, n - 1)] = specials[fdp.ConsumeIntInRange(0, len(specials) - 1)]
    return v


def fill(t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    if t.device.type == "meta" or t.numel() == 0:
        return t
    with torch.no_grad():
        if t.dtype.is_complex or t.dtype.is_floating_point:
            src = v[: t.numel()].reshape(t.shape)
            t.copy_(src.to(t.dtype) if t.dtype != torch.float8_e4m3fn else src.clamp(-448, 448).to(t.dtype))
        elif t.dtype == torch.bool:
            t.copy_((v[: t.numel()] > 0).reshape(t.shape))
        else:
            t.copy_(v[: t.numel()].nan_to_num(0, 0, 0).clamp(-100, 100).reshape(t.shape).to(t.dtype))
    return t


def buffer(fdp, generator, n, dtype, device="cpu", *, positive=False) -> torch.Tensor:
    """A fresh contiguous 1-D buffer of n values."""
    t = torch.empty(n, dtype=dtype, device=device)
    v = values(fdp, generator, n)
    return fill(t, v.abs() if positive else v)


def mutate_tensor(fdp, generator, t: torch.Tensor, pool: list[torch.Tensor]) -> torch.Tensor:
    """t, or something like it that breaks one rule."""
    if not isinstance(t, torch.Tensor):
        return wrong_type(fdp) if fdp.ConsumeBool() else torch.zeros(3)
    pool = [p for p in pool if isinstance(p, torch.Tensor)]
    kind = fdp.ConsumeIntInRange(0, 15)
    n = t.numel()
    if kind == 0:  # another dtype
        other = torch.empty(t.shape, dtype=pick(fdp, FLOATS + OTHER_DTYPES), device=t.device)
        return fill(other, values(fdp, generator, n))
    if kind == 1:  # another device
        return torch.empty(t.shape, dtype=t.dtype, device="meta" if t.device.type == "cpu" else "cpu")
    if kind == 2:  # another length
        m = max(0, n + pick(fdp, [-1, 1, -n, 5, 1024]))
        return fill(torch.empty(m, dtype=t.dtype, device=t.device), values(fdp, generator, m))
    if kind == 3:  # strided view of a larger buffer
        big = fill(torch.empty(2 * n + 1, dtype=t.dtype, device=t.device), values(fdp, generator, 2 * n + 1))
        return big[::2][:n] if n else big[:0]
    if kind == 4:  # 2-D
        return fill(
            torch.empty((1, n) if fdp.ConsumeBool() else (n, 1), dtype=t.dtype, device=t.device),
            values(fdp, generator, n),
        )
    if kind == 5:  # 0-dim
        return fill(torch.empty((), dtype=t.dtype, device=t.device), values(fdp, generator, 1))
    if kind == 6 and pool:  # the very same tensor as another argument
        return pick(fdp, pool)
    if kind == 7 and pool:  # a view sharing memory with another argument, shifted
        other = pick(fdp, pool)
        if other.dim() == 1 and other.numel() > 1:
            shift = fdp.ConsumeIntInRange(1, other.numel() - 1)
            return other[shift:]
        return other
    if kind == 8 and pool:  # the same memory reinterpreted (view of another dtype of the same size)
        other = pick(fdp, pool)
        if other.dim() == 1 and other.dtype in (torch.float16, torch.bfloat16):
            return other.view(torch.bfloat16 if other.dtype == torch.float16 else torch.float16)
        if other.dim() == 1 and other.dtype == torch.float32:
            return other.view(torch.int32)
        return other
    if kind == 9:  # stride 0 (expanded)
        return fill(torch.empty(1, dtype=t.dtype, device=t.device), values(fdp, generator, 1)).expand(max(n, 1))
    if kind == 10 and t.dtype.is_floating_point:  # requires grad
        return t.detach().clone().requires_grad_()
    if kind == 11:  # non-tensor
        return wrong_type(fdp)
    if kind == 12:  # empty
        return torch.empty(0, dtype=t.dtype, device=t.device)
    if kind == 13:  # storage offset, then the rest of a larger buffer after it
        big = fill(torch.empty(n + 3, dtype=t.dtype, device=t.device), values(fdp, generator, n + 3))
        return big[3:]
    if kind == 14:  # overlapping strides (a 2-D view whose rows overlap)
        big = fill(torch.empty(n + 2, dtype=t.dtype, device=t.device), values(fdp, generator, n + 2))
        return big.as_strided((2, max(n, 1) // 2 + 1), (1, 1)) if n else big[:0]
    return t


# ---- overlap of storages -----------------------------------------------------------------------------------------


def byte_range(t: torch.Tensor) -> tuple[int, int, int] | None:
    """(storage address, first byte, one past the last byte) of what t can reach; None for meta or empty."""
    if not isinstance(t, torch.Tensor) or t.device.type == "meta" or t.numel() == 0:
        return None
    start = t.storage_offset()
    lo = start + sum(min(0, (s - 1) * st) for s, st in zip(t.shape, t.stride(), strict=True))
    hi = start + sum(max(0, (s - 1) * st) for s, st in zip(t.shape, t.stride(), strict=True)) + 1
    storage = t.untyped_storage().data_ptr()
    return storage, lo * t.element_size(), hi * t.element_size()


def overlap(a, b) -> bool:
    ra, rb = byte_range(a), byte_range(b)
    return ra is not None and rb is not None and ra[0] == rb[0] and ra[1] < rb[2] and rb[1] < ra[2]


def flat_tensors(args) -> list[tuple[str, torch.Tensor]]:
    out = []
    for name, value in args:
        if isinstance(value, torch.Tensor):
            out.append((name, value))
        elif isinstance(value, list | tuple):
            out.extend((f"{name}[{k}]", v) for k, v in enumerate(value) if isinstance(v, torch.Tensor))
    return out


def storage_bytes(t: torch.Tensor) -> torch.Tensor:
    """The whole storage under t, as a uint8 tensor sharing its memory."""
    return torch.empty(0, dtype=torch.uint8).set_(t.untyped_storage())


def snapshot(args) -> dict[int, torch.Tensor]:
    """A copy of every storage the argument tensors use (CPU only), as uint8 tensors by storage address."""
    shots = {}
    for _, t in flat_tensors(args):
        if t.device.type == "cpu":
            s = t.untyped_storage()
            if s.data_ptr() not in shots and s.nbytes() > 0:
                shots[s.data_ptr()] = storage_bytes(t).clone()
    return shots


def unchanged(before: dict[int, torch.Tensor], names_and_tensors, skip=()) -> list[str]:
    """Names of tensors whose storage bytes changed; tensors sharing memory with one in ``skip`` (tensors the call
    may write) are not looked at."""
    changed = []
    for name, t in names_and_tensors:
        if t.device.type != "cpu" or any(overlap(t, s) for s in skip):
            continue
        s = t.untyped_storage()
        if s.data_ptr() in before and not torch.equal(storage_bytes(t), before[s.data_ptr()]):
            changed.append(name)
    return changed


def describe(t, before=None) -> str:
    """A tensor's layout, and its values (as they were before the call, given the snapshot) when there are few."""
    if not isinstance(t, torch.Tensor):
        if isinstance(t, list | tuple):
            return f"{type(t).__name__}[{', '.join(describe(x, before) for x in t)}]"
        return repr(t)
    text = f"Tensor({tuple(t.shape)}, {t.dtype}, {t.device}, stride={t.stride()}, offset={t.storage_offset()}"
    if t.requires_grad:
        text += ", requires_grad"
    if t.device.type == "cpu" and t.numel() <= 8:
        shown = restored(t, before) if before is not None else t
        text += f", values={shown.detach().flatten().tolist()}"
    return text + ")"


def describe_call(op, args, before=None) -> str:
    lines = [f"{op}("]
    tensors = flat_tensors(args)
    for name, value in args:
        lines.append(f"  {name}={describe(value, before)},")
    for i, (na, a) in enumerate(tensors):
        for nb, b in tensors[:i]:
            if overlap(a, b):
                lines.append(f"  # {na} shares memory with {nb}" + (" (the same tensor)" if a is b else ""))
    return "\n".join(lines + [")"])


# ---- one call per op family --------------------------------------------------------------------------------------


class Call:
    """One generated call: the op's name, the callable, and its arguments as (name, value) pairs."""

    def __init__(self, op, fn, args, how):
        self.op, self.fn, self.args, self.how = op, fn, args, how

    def run(self):
        return invoke(self.fn, self.op, [v for _, v in self.args])


def entry(fdp, op):
    """The callable: the op packet, its .default overload, or the Python wrapper where there is one."""
    packet = getattr(torch.ops.mimo_ext, op)
    choices = [("packet", packet), ("default", packet.default)]
    if op in ("smooth_max", "blend", "blend_"):
        choices.append(("wrapper", getattr(mimo_ext, op)))
    return pick(fdp, choices)


def device_of(fdp):
    return "meta" if fdp.ConsumeIntInRange(0, 9) == 0 else "cpu"


def gen_smooth_max(fdp, generator) -> Call:
    device = device_of(fdp)
    dtype = pick(fdp, FLOATS)
    rank = fdp.ConsumeIntInRange(1, 3)
    shape = [pick(fdp, [1, 2, 3, 5, 8, 33]) for _ in range(rank)]
    losses = fill(torch.empty(shape, dtype=dtype, device=device), values(fdp, generator, math.prod(shape)))
    if rank >= 2 and fdp.ConsumeIntInRange(0, 3) == 0:
        losses = losses.transpose(0, -1)
    mu = scalar(fdp, pick(fdp, [1.0, 0.1, 1e-3, 10.0]), odd_chance=25)
    for _ in range(pick(fdp, [0, 0, 1, 1, 2])):
        if fdp.ConsumeBool():
            losses = mutate_tensor(fdp, generator, losses, [])
        else:
            mu = scalar(fdp, mu, odd_chance=100)
    how, fn = entry(fdp, "smooth_max")
    return Call("smooth_max", fn, [("losses", losses), ("mu", mu)], how)


def gen_smooth_max_backward(fdp, generator) -> Call:
    device = device_of(fdp)
    dtype = pick(fdp, FLOATS)
    shape = [pick(fdp, [1, 2, 3, 7]) for _ in range(fdp.ConsumeIntInRange(1, 3))]
    weights = fill(torch.empty(shape, dtype=dtype, device=device), values(fdp, generator, math.prod(shape)))
    grad_value = fill(torch.empty(shape[:-1], dtype=dtype, device=device), values(fdp, generator, math.prod(shape)))
    for _ in range(pick(fdp, [0, 1, 1, 2])):
        if fdp.ConsumeBool():
            weights = mutate_tensor(fdp, generator, weights, [grad_value])
        else:
            grad_value = mutate_tensor(fdp, generator, grad_value, [weights])
    how, fn = entry(fdp, "smooth_max_backward")
    return Call("smooth_max_backward", fn, [("grad_value", grad_value), ("weights", weights)], how)


LENGTHS = [0, 1, 2, 7, 64, 1023, 1025, 16385]


def gen_blend(fdp, generator, op) -> Call:
    device = device_of(fdp)
    dtype = pick(fdp, FLOATS)
    n = pick(fdp, LENGTHS[:-1] if fdp.ConsumeIntInRange(0, 9) else LENGTHS)
    k_count = pick(fdp, [1, 1, 2, 3, 4, 16, 17])
    base = buffer(fdp, generator, n, dtype, device)
    grads = [buffer(fdp, generator, n, dtype, device) for _ in range(k_count)]
    weights = fill(torch.empty(k_count, dtype=pick(fdp, FLOATS), device=device), values(fdp, generator, k_count))
    gamma = scalar(fdp, pick(fdp, [1.0, -0.7, 0.0, 3.0]), odd_chance=20)
    mutations = pick(fdp, [0, 0, 1, 1, 2, 3])
    for i in range(mutations):
        what = fdp.ConsumeIntInRange(0, 6 if i == mutations - 1 else 5)
        if what == 0:
            base = mutate_tensor(fdp, generator, base, [*grads, weights])
        elif what in (1, 2):
            if grads:
                k = fdp.ConsumeIntInRange(0, len(grads) - 1)
                grads[k] = mutate_tensor(fdp, generator, grads[k], [base, weights, *grads])
        elif what == 3:
            weights = mutate_tensor(fdp, generator, weights, [base, *grads])
        elif what == 4:  # another number of grads (weights unchanged)
            grads = grads[: fdp.ConsumeIntInRange(0, len(grads))] if fdp.ConsumeBool() else grads + grads[:1]
        elif what == 5:
            gamma = scalar(fdp, gamma, odd_chance=100)
        else:
            grads = not_a_tensor_list(fdp, grads)
    how, fn = entry(fdp, op)
    return Call(op, fn, [("base", base), ("grads", grads), ("weights", weights), ("gamma", gamma)], how)


def not_a_tensor_list(fdp, grads: list):
    """grads as a tuple, a single tensor, or a list holding a non-tensor (the last mutation of a call)."""
    return pick(fdp, [tuple(grads), grads[0] if grads else None, [*grads, None], [*grads, 1.0]])


def gen_step(fdp, generator, op) -> Call:
    device = device_of(fdp)
    dtype = pick(fdp, FLOATS)
    n = pick(fdp, LENGTHS[:-1] if fdp.ConsumeIntInRange(0, 9) else LENGTHS)
    k_count = pick(fdp, [1, 1, 2, 3, 4, 16, 17])
    acc = math_dtype(dtype)
    param = buffer(fdp, generator, n, dtype, device)
    state_names = ["momentum_buffer"] if op == "sgd_step_" else ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"]
    states = {name: buffer(fdp, generator, n, dtype, device, positive=name.endswith("sq")) for name in state_names}
    grads = [buffer(fdp, generator, n, dtype, device) for _ in range(k_count)]
    coefficients = fill(
        torch.empty(k_count, dtype=pick(fdp, [torch.float32, acc]), device=device),
        values(fdp, generator, k_count).abs(),
    )
    lr = torch.tensor(
        scalar(fdp, pick(fdp, [0.05, 1e-3, 1.0]), odd_chance=10, floats_only=True),
        dtype=pick(fdp, [acc, torch.float32]),
        device=device,
    )
    step = torch.tensor(float(pick(fdp, [0, 0, 1, 5, 1000])), dtype=torch.float32, device=device)
    grad_scale = None if fdp.ConsumeBool() else torch.tensor(pick(fdp, [1024.0, 1.0, 0.5, 65536.0]), device=device)
    found_inf = None if fdp.ConsumeBool() else torch.tensor([pick(fdp, [0.0, 0.0, 1.0])], device=device)
    if op == "sgd_step_":
        hyper = [
            ("weight_decay", scalar(fdp, pick(fdp, [0.0, 0.01]))),
            ("momentum", scalar(fdp, pick(fdp, [0.0, 0.9]))),
            ("dampening", scalar(fdp, pick(fdp, [0.0, 0.1]))),
        ]
        nesterov = fdp.ConsumeBool() and hyper[1][1] == 0.9 and hyper[2][1] == 0.0
        hyper += [("nesterov", nesterov), ("maximize", fdp.ConsumeBool())]
    else:
        hyper = [
            ("beta1", scalar(fdp, pick(fdp, [0.9, 0.875, 0.0]))),
            ("beta2", scalar(fdp, pick(fdp, [0.999, 0.9990234375, 0.75]))),
            ("eps", scalar(fdp, pick(fdp, [1e-8, 1e-3]))),
            ("weight_decay", scalar(fdp, pick(fdp, [0.0, 0.01]))),
            ("amsgrad", fdp.ConsumeBool()),
            ("maximize", fdp.ConsumeBool()),
        ]
    hyper.append(("compute_stats", fdp.ConsumeBool()))
    tensor_args = {
        "param": param,
        **states,
        "grads": grads,
        "coefficients": coefficients,
        "lr": lr,
        "step": step,
        "grad_scale": grad_scale,
        "found_inf": found_inf,
    }
    hyper = dict(hyper)
    mutations = pick(fdp, [0, 0, 1, 1, 2, 3])
    for i in range(mutations):
        what = fdp.ConsumeIntInRange(0, 6 if i == mutations - 1 else 5)
        pool = [
            t
            for t in [param, *states.values(), *grads, coefficients, lr, step, grad_scale, found_inf]
            if isinstance(t, torch.Tensor)
        ]
        if what <= 2:
            name = pick(fdp, [n for n in tensor_args if n != "grads"])
            like = tensor_args[name] if tensor_args[name] is not None else torch.tensor(1.0, device=device)
            tensor_args[name] = mutate_tensor(fdp, generator, like, pool)
            if name == "param":
                param = tensor_args[name]
        elif what == 3:
            if grads:
                k = fdp.ConsumeIntInRange(0, len(grads) - 1)
                grads[k] = mutate_tensor(fdp, generator, grads[k], pool)
        elif what == 4:
            grads[:] = grads[: fdp.ConsumeIntInRange(0, len(grads))] if fdp.ConsumeBool() else grads + grads[:1] * 3
        elif what == 5:
            name = pick(fdp, list(hyper))
            hyper[name] = (
                scalar(fdp, hyper[name], odd_chance=100) if isinstance(hyper[name], float) else wrong_type(fdp)
            )
        else:
            tensor_args["grads"] = not_a_tensor_list(fdp, grads)
    names = ARGUMENT_NAMES[op]
    merged = {**tensor_args, **hyper}
    how, fn = entry(fdp, op)
    return Call(op, fn, [(name, merged[name]) for name in names], how)


GENERATORS = [
    ("smooth_max", gen_smooth_max),
    ("smooth_max_backward", gen_smooth_max_backward),
    ("blend", lambda fdp, g: gen_blend(fdp, g, "blend")),
    ("blend_", lambda fdp, g: gen_blend(fdp, g, "blend_")),
    ("sgd_step_", lambda fdp, g: gen_step(fdp, g, "sgd_step_")),
    ("adamw_step_", lambda fdp, g: gen_step(fdp, g, "adamw_step_")),
]


# ---- the oracle --------------------------------------------------------------------------------------------------


def written_args(call: Call) -> list[str]:
    """The arguments the op writes (for the step ops: param, the state buffers the options use, step)."""
    a = dict(call.args)
    if call.op == "blend_":
        return ["base"]
    if call.op == "sgd_step_":
        return ["param", "step"] + (["momentum_buffer"] if a["momentum"] != 0 else [])
    if call.op == "adamw_step_":
        return ["param", "exp_avg", "exp_avg_sq", "step"] + (["max_exp_avg_sq"] if a["amsgrad"] else [])
    return []


def unused_args(call: Call) -> list[str]:
    a = dict(call.args)
    if call.op == "sgd_step_" and a["momentum"] == 0:
        return ["momentum_buffer"]
    if call.op == "adamw_step_" and not a["amsgrad"]:
        return ["max_exp_avg_sq"]
    return []


def accepted_overlaps(call: Call) -> list[str]:
    """Pairs (written argument, other argument) that share memory in a call that was accepted."""
    a = dict(call.args)
    tensors = [(n, t) for n, t in flat_tensors(call.args) if n not in unused_args(call)]
    found = []
    for w in written_args(call):
        for name, t in tensors:
            if name == w or not overlap(a[w], t):
                continue
            if call.op == "blend_" and name.startswith("grads[") and t is a["base"]:
                continue  # documented: base itself among the grads
            if call.op == "blend_" and name.startswith("grads[") and same_view(t, a["base"]):
                continue
            found.append(f"{w}~{name.split('[')[0]}")
    return sorted(set(found))


def same_view(a, b) -> bool:
    return (
        a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
        and a.storage_offset() == b.storage_offset()
        and a.shape == b.shape
        and a.stride() == b.stride()
        and a.dtype == b.dtype
    )


def check_error(call: Call, error: BaseException, before) -> None:
    if not isinstance(error, ALLOWED_ERRORS):
        raise Finding("error-type", f"{type(error).__name__}: {error}")
    message = str(error)
    if not message.strip() or any(bad.lower() in message.lower() for bad in BAD_MESSAGES):
        raise Finding("error-message", f"{type(error).__name__}: {message}")
    names = [*ARGUMENT_NAMES[call.op], "mimo_ext", call.op]
    if not any(name in message for name in names):
        raise Finding("error-unclear", f"message names neither the op nor an argument: {message}")
    changed = unchanged(before, flat_tensors(call.args))
    if changed:
        first_line = message.splitlines()[0]
        raise Finding("rejected-but-written", f"{type(error).__name__} ({first_line}) but {changed} changed")


def all_cpu(call: Call) -> bool:
    tensors = [t for _, t in flat_tensors(call.args)]
    return all(t.device.type == "cpu" for t in tensors)


def check_success(call: Call, result, before) -> None:
    a = dict(call.args)
    meta = any(t.device.type == "meta" for _, t in flat_tensors(call.args))
    if meta:
        check_meta_like_cpu(call, result)
        return
    overlaps = accepted_overlaps(call)
    if overlaps:
        finding = Finding(
            "accepted-overlap", f"accepted a call whose written argument shares memory with another: {overlaps}"
        )
        finding.key = f"accepted-overlap:{call.op}:{overlaps[0]}"
        raise finding
    # Read-only inputs and unused state buffers untouched (unless they share memory with a written argument).
    written = [a[n] for n in written_args(call)]
    others = [(n, t) for n, t in flat_tensors(call.args) if n not in written_args(call)]
    changed = unchanged(before, others, skip=written)
    if changed:
        kind = "unused-state-written" if set(changed) <= set(unused_args(call)) else "read-only-written"
        raise Finding(kind, f"{changed} changed")
    try:
        check_result(call, a, result, before)
    except (RuntimeError, ValueError, TypeError, IndexError) as error:
        # The plain-PyTorch reference cannot even run the call (mismatched lengths, say): it should not have passed.
        why = f"accepted, but the reference fails: {type(error).__name__}: {error}"
        raise Finding("accepted-invalid", why) from error


def check_result(call: Call, a: dict, result, before) -> None:
    if call.op == "smooth_max":
        check_smooth_max(a, result)
    elif call.op == "smooth_max_backward":
        truth = smooth_max_backward_reference(a["grad_value"], a["weights"])
        expected_dtype = torch.result_type(a["weights"], a["grad_value"].unsqueeze(-1))  # as the op multiplies
        if result.dtype != expected_dtype:
            raise Finding("result-dtype", f"smooth_max_backward gave {result.dtype}, expected {expected_dtype}")
        if expected_dtype.is_floating_point:
            oracle = smooth_max_backward_reference(a["grad_value"], a["weights"], expected_dtype)
            why = within_reference_error(result, truth, oracle, terms=2)
            if why:
                raise Finding("wrong-result", f"smooth_max_backward: {why}")
    elif call.op in ("blend", "blend_"):
        check_blend(call, a, result, before)
    else:
        check_step(call, a, result, before)


def restored(t: torch.Tensor, before) -> torch.Tensor:
    """t as it was before the call (from the storage snapshot)."""
    if t.untyped_storage().nbytes() == 0 or t.untyped_storage().data_ptr() not in before:
        return t.detach().clone()
    storage = before[t.untyped_storage().data_ptr()].untyped_storage()
    return torch.empty(0, dtype=t.dtype).set_(storage, t.storage_offset(), t.shape, t.stride()).clone()


def check_smooth_max(a, result) -> None:
    losses, mu = a["losses"], a["mu"]
    value, weights = result
    if value.dtype != losses.dtype or weights.dtype != losses.dtype:
        raise Finding("result-dtype", f"smooth_max gave {value.dtype}/{weights.dtype} for {losses.dtype}")
    truth_v, truth_w = smooth_max_reference(losses, float(mu), torch.float64)
    oracle_v, oracle_w = smooth_max_reference(losses, float(mu), math_dtype(losses.dtype))
    l64 = losses.detach().double()
    finite = l64[torch.isfinite(l64)]
    acc = math_dtype(losses.dtype)
    mu_seen = min(float(mu), torch.finfo(acc).max)
    scale = (finite.abs().max().item() if finite.numel() else 0.0) + mu_seen * math.log(losses.shape[-1])
    # The sum over a row of M terms: M + 8 roundings.
    m = losses.shape[-1]
    for name, got, oracle, truth, s in [
        ("value", value, oracle_v, truth_v, scale),
        ("weights", weights, oracle_w, truth_w, 1.0),
    ]:
        why = within_reference_error(got, truth, oracle.to(losses.dtype), scale=s, terms=8 + m)
        if why:
            raise Finding("wrong-result", f"smooth_max {name}: {why}")


def check_blend(call, a, result, before) -> None:
    base = restored(a["base"], before) if call.op == "blend_" else a["base"]
    grads = [restored(g, before) if call.op == "blend_" else g for g in a["grads"]]
    out = a["base"] if call.op == "blend_" else result
    if call.op == "blend_" and not (result is None or result is a["base"]):
        raise Finding("result", f"blend_ returned {describe(result)}")
    if out.dtype != base.dtype or out.shape != base.shape:
        raise Finding("result-dtype", f"{call.op} gave {out.dtype} {tuple(out.shape)}")
    truth = blend_reference(base, grads, a["weights"], float(a["gamma"]), torch.float64)
    oracle = blend_reference(base, grads, a["weights"], float(a["gamma"]), math_dtype(base.dtype)).to(base.dtype)
    # The scale of the roundings: the largest sum of the magnitudes of the terms of one element.
    w = a["weights"].to(math_dtype(base.dtype)).double()
    magnitude = base.double().abs()
    for k, g in enumerate(grads):
        magnitude = magnitude + (float(a["gamma"]) * w[k] * g.double()).abs()
    finite = magnitude[torch.isfinite(magnitude)]
    scale = finite.max().item() if finite.numel() else 0.0
    why = within_reference_error(out, truth, oracle, terms=2 * len(grads) + 4, scale=scale)
    if why:
        raise Finding("wrong-result", f"{call.op}: {why}")


def check_step(call, a, result, before) -> None:
    reference = sgd_step_reference if call.op == "sgd_step_" else adamw_step_reference
    names = ARGUMENT_NAMES[call.op]
    param = a["param"]
    acc = math_dtype(param.dtype)

    def copy_args(dtype):
        args = []
        for name in names:
            v = a[name]
            if isinstance(v, torch.Tensor):
                v = restored(v, before)
                if dtype is not None and name in (
                    "param",
                    "momentum_buffer",
                    "exp_avg",
                    "exp_avg_sq",
                    "max_exp_avg_sq",
                    "coefficients",
                    "lr",
                ):
                    v = v.to(dtype)
            elif isinstance(v, list):
                v = [restored(g, before).to(dtype) if dtype is not None else restored(g, before) for g in v]
            args.append(v)
        return args

    truth_args = copy_args(torch.float64)
    oracle_args = copy_args(None)
    truth_stats = invoke(reference, call.op, truth_args)
    oracle_stats = invoke(reference, call.op, oracle_args)
    if result.dtype != acc or result.shape != oracle_stats.shape:
        raise Finding(
            "result-dtype",
            f"{call.op} stats {result.dtype} {tuple(result.shape)}, expected {acc} {tuple(oracle_stats.shape)}",
        )
    for name in written_args(call):
        i = names.index(name)
        if name == "step":
            if not torch.equal(a["step"], oracle_args[i]) and not (a["step"].isnan() & oracle_args[i].isnan()).all():
                raise Finding("wrong-result", f"{call.op}: step {a['step'].item()}, expected {oracle_args[i].item()}")
            continue
        why = within_reference_error(a[name], truth_args[i], oracle_args[i], terms=16)
        if why:
            raise Finding("wrong-result", f"{call.op}: {name}: {why}")
    if result.numel():
        # The statistics are sums over n elements: n + 2K + 4 roundings of the sum of |terms| (as the Python tests).
        n = param.numel()
        # The K whole buffers (grads may come in pieces, an empty piece meaning zeros: joined as the reference does).
        whole = whole_grads([restored(x, before) for x in a["grads"]], a["coefficients"], param)
        g = [x.double().abs() for x in whole]
        c = a["coefficients"].to(acc).double().abs()
        scale = None if a["grad_scale"] is None else restored(a["grad_scale"], before).to(acc).double().reshape(())
        inv = 1.0 if scale is None else (1 / scale).item()
        blended = sum(ck * x for ck, x in zip(c, g, strict=True)) * inv
        # The kernel sums the raw (scaled) buffers, then multiplies all but the last statistic by 1 / grad_scale^2.
        raw = torch.stack([*[(x * x).sum() for x in g], *[(g[0] * x).sum() for x in g[1:]], (blended * blended).sum()])
        unscale = torch.tensor([inv * inv] * (2 * len(g) - 1) + [1.0], dtype=torch.float64)
        bound = raw * unscale
        truth = truth_stats.double()
        own = (oracle_stats.double() - truth).abs()  # e.g. squares that underflow in float32
        tolerance = 2 * own + bound * (n + 2 * len(g) + 4) * torch.finfo(acc).eps
        got = result.double()
        ok = (got - truth).abs() <= tolerance
        ok |= got.isnan() & truth.isnan()
        ok |= got == truth
        # A sum whose terms' magnitudes add up past the math dtype's range can end as Inf, NaN (Inf - Inf) or a
        # large finite value depending on the order of summation: not compared.
        ok |= (raw > torch.finfo(acc).max) | (bound > torch.finfo(acc).max)
        # Where the reference in the math dtype is not finite either (1 / grad_scale^2 overflowing it, say).
        ok |= ~torch.isfinite(oracle_stats.double()) & ~torch.isfinite(got)
        if not ok.all():
            i = int((~ok).nonzero()[0, 0])
            raise Finding(
                "wrong-result",
                f"{call.op} stats[{i}] = {got[i].item()!r}, float64 reference {truth[i].item()!r}, reference in "
                f"{acc} {oracle_stats[i].item()!r}, tolerance {tolerance[i].item()!r} ({int((~ok).sum())} of "
                f"{ok.numel()} statistics off)",
            )


def on_cpu(v):
    """A meta tensor as zeros on the CPU, with the same sizes, strides and storage offset."""
    if isinstance(v, torch.Tensor):
        if v.device.type != "meta":
            return v
        extent = v.storage_offset() + 1 + sum((n - 1) * st for n, st in zip(v.shape, v.stride(), strict=True))
        storage = torch.zeros(extent if v.numel() else v.storage_offset(), dtype=v.dtype)
        return storage.as_strided(v.shape, v.stride(), v.storage_offset())
    if isinstance(v, list | tuple):
        return type(v)(on_cpu(x) for x in v)
    return v


def check_meta_like_cpu(call: Call, result) -> None:
    """A meta call that succeeded: the CPU kernel, given zeros of the same layout, gives the same shapes and dtypes
    (when it accepts the call at all: the fake implementations check devices only, the kernels everything)."""
    cpu_args = [on_cpu(v) for _, v in call.args]
    if any(isinstance(v, torch.Tensor) and v.device.type == "meta" for v in cpu_args):
        return
    try:
        cpu_result = invoke(call.fn, call.op, cpu_args)
    except ALLOWED_ERRORS:
        STATS["meta accepted, CPU rejected"] += 1
        return
    flat = lambda r: [r] if isinstance(r, torch.Tensor) else [x for x in (r or ()) if isinstance(x, torch.Tensor)]  # noqa: E731
    got, expected = flat(result), flat(cpu_result)
    if [(tuple(t.shape), t.dtype) for t in got] != [(tuple(t.shape), t.dtype) for t in expected]:
        raise Finding(
            "meta-mismatch",
            f"meta gives {[(tuple(t.shape), t.dtype) for t in got]}, CPU "
            f"{[(tuple(t.shape), t.dtype) for t in expected]}",
        )


# ---- known issues -------------------------------------------------------------------------------------------------
# Found by this fuzzer and reported, not fixed here (the checks and kernels belong to other changes). A finding that
# one of these predicates recognises is counted under the issue's name instead of failing (unless --strict), so
# that CI still fails on anything new. Remove an entry once its fix is in: --strict then shows it stays fixed.
# Entries map a name to (description, predicate(finding, call, before) -> bool). None open: every finding so far is
# fixed, each with a regression test in python_tests/reliability/test_fuzz_findings.py.

KNOWN_ISSUES: dict = {}


def known_issue(finding, call, before) -> str | None:
    for name, (_, predicate) in KNOWN_ISSUES.items():
        try:
            if predicate(finding, call, before):
                return name
        except Exception:  # noqa: BLE001 - a predicate that cannot judge this call does not recognise it
            continue
    return None


START = time.monotonic()


def test_one_input(data: bytes) -> None:
    if OPTIONS.seconds is not None and time.monotonic() - START > OPTIONS.seconds:
        finish()
    fdp = Decisions(data)
    op, gen = pick(fdp, GENERATORS)
    generator = torch.Generator().manual_seed(fdp.ConsumeIntInRange(0, 2**31))
    call = gen(fdp, generator)
    STATS["calls"] += 1
    STATS[f"op {call.op} via {call.how}"] += 1
    before = snapshot(call.args)
    if OPTIONS.verbose:
        print(describe_call(call.op, call.args), file=sys.stderr)
    try:
        try:
            result = call.run()
        except BaseException as error:  # noqa: BLE001 - every exception is judged below
            if isinstance(error, KeyboardInterrupt | SystemExit):
                raise
            STATS["rejected"] += 1
            STATS[f"rejected with {type(error).__name__}"] += 1
            check_error(call, error, before)
            return
        STATS["accepted"] += 1
        STATS["accepted on meta" if not all_cpu(call) else "accepted on CPU"] += 1
        check_success(call, result, before)
    except Finding as finding:
        if not finding.key.startswith("accepted-overlap:"):
            finding.key = f"{finding.kind}:{call.op}"
        known = known_issue(finding, call, before)
        if known is not None and not OPTIONS.strict:
            STATS[f"known issue {known}"] += 1
            return
        STATS[f"FINDING {finding.key}"] += 1
        if STATS[f"FINDING {finding.key}"] == 1:
            described = describe_call(call.op, call.args, before)
            print(f"\nFINDING [{finding.key}] {finding}\ncalled via {call.how}: {described}", file=sys.stderr)
            if OPTIONS.keep_going:  # (without it libFuzzer saves the input as a crash)
                path = f"{ARTIFACT_PREFIX}finding-{hashlib.sha1(data).hexdigest()}"
                Path(path).write_bytes(data)
                print(f"input saved as {path}", file=sys.stderr)
        if not OPTIONS.keep_going:
            raise


def finish() -> None:
    """Ends the run here (libFuzzer's own exit skips Python's atexit): summary, then exit status 1 on findings."""
    report()
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(1 if any(k.startswith("FINDING") for k in STATS) else 0)


def report() -> None:
    elapsed = time.monotonic() - START
    print(
        f"\nfuzz_checks summary: {STATS['calls']} calls in {elapsed:.0f} s ({STATS['calls'] / elapsed:.0f}/s)",
        file=sys.stderr,
    )
    for key, count in sorted(STATS.items()):
        print(f"  {key}: {count}", file=sys.stderr)
    for key in sorted(k for k in STATS if k.startswith("known issue")):
        print(f"  ({key[12:]}: {KNOWN_ISSUES[key[12:]][0]})", file=sys.stderr)
    if any(k.startswith("FINDING") for k in STATS):
        print("fuzz_checks: FINDINGS (see above)", file=sys.stderr)


def main() -> None:
    for name, value in list(globals().items()):
        if (
            isinstance(value, types.FunctionType)
            and value.__module__ == __name__
            and name not in ("main", "report", "finish")
        ):
            globals()[name] = atheris.instrument_func(value)
    import atexit

    atexit.register(report)
    global START
    START = time.monotonic()
    atheris.Setup([sys.argv[0], *LIBFUZZER_ARGS], globals()["test_one_input"])
    atheris.Fuzz()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
