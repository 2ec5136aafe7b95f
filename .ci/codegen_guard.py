"""Codegen guard for the CUDA kernels, from the built library's SASS: needs no GPU.

For every kernel in the library's SASS for the given architectures it reports registers, stack frame, shared
memory, local loads / stores (LDL / STL) and 128-bit global loads / stores, and fails (exit status 1) when
- any kernel uses local memory: a stack frame, LDL or STL (register spills, or an array indexed at run time:
  one local read-modify-write per element in a memory-bound loop), or
- a vectorised variant (a kernel whose vector-width template argument is > 1) lacks 128-bit global loads or
  stores (LDG.E.128 / STG.E.128): its 16-byte vector accesses were split.

    python .ci/codegen_guard.py [LIBRARY] [--arch sm_90 ...] [--out table.md]

LIBRARY defaults to the compiled extension in mimo_ext/. cuobjdump comes from $CUDA_HOME/bin, else from PATH,
else from torch's triton dependency (which ships one).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Kernel name -> index of its vector-width template argument (kernels not listed are not vectorised).
VECTOR_WIDTH_ARGUMENT = {"blend_kernel": 4, "step_kernel": 2}


@dataclass
class Kernel:
    mangled: str
    name: str = ""
    registers: int = 0
    stack: int = 0
    shared: int = 0
    local: int = 0
    counts: dict[str, int] = field(default_factory=dict)


def find_cuobjdump() -> str:
    candidates = []
    if os.environ.get("CUDA_HOME"):
        candidates.append(Path(os.environ["CUDA_HOME"], "bin", "cuobjdump"))
    on_path = shutil.which("cuobjdump")
    if on_path:
        candidates.append(Path(on_path))
    try:
        import triton

        candidates.append(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump")
    except ImportError:
        pass
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    sys.exit("codegen guard: no cuobjdump found (CUDA_HOME/bin, PATH, or triton's)")


def default_library() -> Path:
    found = sorted((ROOT / "mimo_ext").glob("_C*.so"))
    if not found:
        sys.exit("codegen guard: no mimo_ext/_C*.so; build the extension first (bash .ci/setup)")
    return found[0]


def demangle(names: list[str]) -> list[str]:
    filt = shutil.which("c++filt")
    if filt is None:
        return names
    out = subprocess.run([filt], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    return out.splitlines()


def short_name(demangled: str) -> str:
    """'void mimo_ext::(anonymous namespace)::blend_kernel<float, ...>(args)' -> 'blend_kernel<float, ...>'."""
    head = demangled.split("(", 1)[0] if "<" not in demangled else demangled[: matching_close(demangled) + 1]
    head = head.removeprefix("void ")
    head = re.sub(r"mimo_ext::(\(anonymous namespace\)::)?", "", head)
    head = re.sub(r"(c10|math|std)::", "", head)
    return head


def matching_close(text: str) -> int:
    """Index of the '>' closing the first '<' in text."""
    depth = 0
    for i, c in enumerate(text):
        if c == "<":
            depth += 1
        elif c == ">":
            depth -= 1
            if depth == 0:
                return i
    return len(text) - 1


def template_arguments(name: str) -> list[str]:
    """Top-level template arguments of 'kernel<a, b<c, d>, 4>' -> ['a', 'b<c, d>', '4']."""
    start = name.find("<")
    if start < 0:
        return []
    args, depth, current = [], 0, ""
    for c in name[start + 1 : matching_close(name)]:
        if c == "<":
            depth += 1
        elif c == ">":
            depth -= 1
        if c == "," and depth == 0:
            args.append(current.strip())
            current = ""
        else:
            current += c
    args.append(current.strip())
    return args


def vector_width(name: str) -> int:
    base = name.split("<", 1)[0]
    if base not in VECTOR_WIDTH_ARGUMENT:
        return 1
    args = template_arguments(name)
    try:
        return int(args[VECTOR_WIDTH_ARGUMENT[base]])
    except (IndexError, ValueError):
        return 1


def read_kernels(cuobjdump: str, library: Path, arch: str) -> dict[str, Kernel]:
    kernels: dict[str, Kernel] = {}
    usage = subprocess.run(
        [cuobjdump, "-res-usage", "-arch", arch, str(library)], capture_output=True, text=True, check=True
    ).stdout
    current = None
    for line in usage.splitlines():
        m = re.search(r"Function (\S+):", line)
        if m:
            current = kernels.setdefault(m.group(1), Kernel(m.group(1)))
            continue
        if current is not None and "REG:" in line:
            fields = dict(re.findall(r"(\w+):(\d+)", line))
            current.registers = int(fields.get("REG", 0))
            current.stack = int(fields.get("STACK", 0))
            current.shared = int(fields.get("SHARED", 0))
            current.local = int(fields.get("LOCAL", 0))
    sass = subprocess.run(
        [cuobjdump, "-sass", "-arch", arch, str(library)], capture_output=True, text=True, check=True
    ).stdout
    current = None
    for line in sass.splitlines():
        m = re.match(r"\s*Function : (\S+)", line)
        if m:
            current = kernels.setdefault(m.group(1), Kernel(m.group(1)))
            continue
        if current is None:
            continue
        m = re.search(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", line)
        if not m:
            continue
        opcode = m.group(1)
        base = opcode.split(".", 1)[0]
        for key, hit in (
            ("LDL", base == "LDL"),
            ("STL", base == "STL"),
            ("LDG.128", base == "LDG" and ".128" in opcode),
            ("STG.128", base == "STG" and ".128" in opcode),
            ("LDG", base == "LDG"),
            ("STG", base == "STG"),
        ):
            if hit:
                current.counts[key] = current.counts.get(key, 0) + 1
    names = demangle(list(kernels))
    for kernel, demangled in zip(kernels.values(), names, strict=True):
        kernel.name = short_name(demangled)
    return kernels


def check(kernels: dict[str, Kernel]) -> list[str]:
    problems = []
    for k in kernels.values():
        local_ops = k.counts.get("LDL", 0) + k.counts.get("STL", 0)
        if k.stack or k.local or local_ops:
            problems.append(f"{k.name}: local memory (stack {k.stack} B, local {k.local} B, {local_ops} LDL/STL)")
        if vector_width(k.name) > 1 and not (k.counts.get("LDG.128") and k.counts.get("STG.128")):
            problems.append(
                f"{k.name}: vectorised (width {vector_width(k.name)}) but "
                f"{k.counts.get('LDG.128', 0)} 128-bit loads and {k.counts.get('STG.128', 0)} 128-bit stores"
            )
    return problems


def table(arch: str, kernels: dict[str, Kernel]) -> str:
    rows = [
        f"### {arch}: {len(kernels)} kernels",
        "",
        "| kernel | vec | regs | stack B | shared B | LDL | STL | LDG.128 / LDG | STG.128 / STG |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for k in sorted(kernels.values(), key=lambda k: k.name):
        c = k.counts
        cells = [f"`{k.name}`", vector_width(k.name), k.registers, k.stack, k.shared, c.get("LDL", 0), c.get("STL", 0)]
        cells += [f"{c.get('LDG.128', 0)} / {c.get('LDG', 0)}", f"{c.get('STG.128', 0)} / {c.get('STG', 0)}"]
        rows.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    registers = [k.registers for k in kernels.values()]
    if registers:
        rows += ["", f"registers: min {min(registers)}, max {max(registers)}"]
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("library", nargs="?", type=Path, default=None, help="default: mimo_ext/_C*.so")
    parser.add_argument("--arch", action="append", default=None, help="SASS architecture(s) (default sm_90)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table (markdown) here")
    args = parser.parse_args(argv)
    library = args.library or default_library()
    cuobjdump = find_cuobjdump()
    report, problems = [f"codegen guard: {library.name}, cuobjdump {cuobjdump}"], []
    for arch in args.arch or ["sm_90"]:
        kernels = read_kernels(cuobjdump, library, arch)
        if not kernels:
            problems.append(f"{arch}: no kernels found in the library's SASS (built without CUDA, or not for {arch})")
            continue
        report.append(table(arch, kernels))
        problems += [f"{arch} {p}" for p in check(kernels)]
    report.append("PASS: no local memory; vectorised kernels use 128-bit loads and stores" if not problems else "")
    report += [f"FAIL {p}" for p in problems]
    text = "\n\n".join(r for r in report if r)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
