"""A small, complete set of calls of every op for the compute-sanitizer stages of .ci/gpu (and a CPU smoke run
in its --dry-run): each op on odd sizes, aligned and misaligned buffers, every path of its kernel (blend with
K <= 16 and K > 16 through the partial-sum passes, in place with base among the grads; smooth_max's short and
long rows; both step ops with and without statistics, grad_scale and found_inf, K <= 4 and K > 4), each result
checked against a float64 reference so that a sanitizer run also proves the values. The references run on the
CPU, so that the device runs little but the ops' own kernels and the copies (each launch is slow under a sanitizer).

    python .ci/gpu_cases.py [--device cuda]
"""

from __future__ import annotations

import argparse
import sys

import torch

import mimo_ext

N = 4099  # odd: a vector body and a tail


def buffers(n, k, dtype, device, offset, generator):
    """k + 1 views of length n starting `offset` elements into their storage (offset 0: 16-byte aligned)."""

    def one():
        return torch.randn(n + offset, generator=generator, dtype=torch.float64).to(device, dtype)[offset:]

    return [one() for _ in range(k + 1)]


def check(name, got, want, dtype):
    tolerance = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2}[dtype]
    error = (got.double().cpu() - want.double().cpu()).abs().max().item() if got.numel() else 0.0
    scale = max(1.0, want.double().abs().max().item()) if want.numel() else 1.0
    if not error <= tolerance * scale:
        raise AssertionError(f"{name}: max error {error:.3g} > {tolerance * scale:.3g}")


def blend_cases(device, generator):
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        for k in (3, 17, 33):
            for offset in (0, 1):
                base, *grads = buffers(N, k, dtype, device, offset, generator)
                weights = torch.rand(k, generator=generator, dtype=torch.float64).to(device)
                exact = [t.to("cpu", torch.float64, copy=True) for t in (base, *grads)]
                want = exact[0] + 0.7 * sum(w * g for w, g in zip(weights.cpu(), exact[1:], strict=True))
                check(f"blend {dtype} K={k} offset={offset}", mimo_ext.blend(base, grads, weights, 0.7), want, dtype)
                # In place with base itself among the grads (more than 16 times when K > 16).
                grads_with_base = [base if i % 2 == 0 else g for i, g in enumerate(grads)]
                exact_with_base = [exact[0] if i % 2 == 0 else g for i, g in enumerate(exact[1:])]
                want = exact[0] + 0.7 * sum(w * g for w, g in zip(weights.cpu(), exact_with_base, strict=True))
                got = mimo_ext.blend_(base, grads_with_base, weights, 0.7)
                check(f"blend_ {dtype} K={k} offset={offset}", got, want, dtype)


def smooth_max_cases(device, generator):
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        for rows, m in ((1, 3), (1001, 3), (7, 33), (3, 1000)):
            losses = torch.randn(rows, m, generator=generator, dtype=torch.float64)
            value, weights = mimo_ext.smooth_max(losses.to(device, dtype), 0.1)
            exact = losses.to(dtype).double()
            check(f"smooth_max {dtype} {rows}x{m} value", value, 0.1 * torch.logsumexp(exact / 0.1, -1), dtype)
            check(f"smooth_max {dtype} {rows}x{m} weights", weights, torch.softmax(exact / 0.1, -1), dtype)


SGD = {"weight_decay": 1e-2, "momentum": 0.9, "dampening": 0.0, "nesterov": True, "maximize": False}
ADAMW = {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 1e-2, "amsgrad": True, "maximize": False}


def step_cases(device, generator):
    from mimo_ext.optim import adamw_step_reference, sgd_step_reference

    algorithms = {
        "sgd": (torch.ops.mimo_ext.sgd_step_, sgd_step_reference, 1, SGD),
        "adamw": (torch.ops.mimo_ext.adamw_step_, adamw_step_reference, 3, ADAMW),
    }
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        for k in (3, 6):  # the kernels' statistics variants for K <= 4 and K <= 16
            for offset in (0, 1):
                for stats in (False, True):
                    for found_inf in (None, 0.0, 1.0):
                        for name, (op, reference, n_states, options) in algorithms.items():
                            param, *grads = buffers(N, k, dtype, device, offset, generator)
                            states = [torch.rand(N, generator=generator).to(device, dtype) for _ in range(n_states)]
                            coefficients = torch.rand(k, generator=generator, dtype=torch.float64).to(device)
                            lr = torch.tensor([1e-2], device=device)
                            step = torch.tensor([3.0], device=device)
                            scale = None if found_inf is None else torch.tensor([4.0], device=device)
                            flag = None if found_inf is None else torch.tensor([found_inf], device=device)
                            # The truth: the reference in float64 on CPU copies of the inputs.
                            # Copies (copy=True): on the CPU .cpu().double() of a float64 tensor is the tensor
                            # itself, and the reference would update the op's own inputs.
                            exact = [t.to("cpu", torch.float64, copy=True) for t in (param, *states)]
                            exact_step = step.to("cpu", copy=True)
                            want_stats = reference(
                                *exact,
                                [g.cpu().double() for g in grads],
                                coefficients.cpu(),
                                lr.cpu(),
                                exact_step,
                                grad_scale=None if scale is None else scale.cpu(),
                                found_inf=None if flag is None else flag.cpu(),
                                **options,
                                compute_stats=stats,
                            )
                            got_stats = op(
                                param, *states, grads, coefficients, lr, step,
                                grad_scale=scale, found_inf=flag, **options, compute_stats=stats,
                            )  # fmt: skip
                            case = f"{name} {dtype} K={k} offset={offset} stats={stats} found_inf={found_inf}"
                            for i, (got, want) in enumerate(zip((param, *states), exact, strict=True)):
                                check(f"{case} buffer {i}", got, want, dtype)
                            check(f"{case} stats", got_stats, want_stats, torch.float32)
                            check(f"{case} step", step, exact_step, torch.float64)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    args = parser.parse_args(argv)
    generator = torch.Generator().manual_seed(0)
    blend_cases(args.device, generator)
    smooth_max_cases(args.device, generator)
    step_cases(args.device, generator)
    if args.device == "cuda":
        torch.cuda.synchronize()
    print(f"gpu_cases: every op checked on {args.device}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
