"""Build of mimo_ext: one shared library of torch ops, with the CUDA kernels whenever a CUDA toolkit and a CUDA
build of torch are present (a GPU need not be visible).

Switches (environment variables):
  FORCE_CUDA=1          build the CUDA kernels, and fail if no CUDA toolkit or CUDA torch is found
  MIMO_EXT_FORCE_CPU=1  build the CPU kernels only, even where CUDA is available
  TORCH_CUDA_ARCH_LIST  GPU architectures, as for any torch extension; when unset and no GPU is visible, the
                        default is "8.0;9.0+PTX" (A100, H100/H200, and PTX that newer GPUs compile at load time)
  MAX_JOBS              parallel compile jobs (ninja)
  MIMO_EXT_DEBUG=1      -O0 -g host and device code
"""

import os
import subprocess
import sys
from pathlib import Path

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = Path(__file__).parent.resolve()
DEFAULT_ARCH_LIST = "8.0;9.0+PTX"


def read_sources() -> dict[str, list[str]]:
    """csrc/sources.txt, the list CMakeLists.txt reads too, as {"cpu": [...], "cuda": [...]}."""
    sections: dict[str, list[str]] = {"cpu": [], "cuda": []}
    current = None
    for raw in (ROOT / "csrc" / "sources.txt").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            continue
        sections[current].append(line)
    return sections


UNSWITCH_FLAG = "--param=max-unswitch-insns=400"


def compiler_is_gcc() -> bool:
    """Whether the C++ compiler torch will call (CXX, default c++) is GCC: it takes GCC-only --param flags."""
    try:
        version = subprocess.run([os.environ.get("CXX", "c++"), "--version"], capture_output=True, text=True)
    except OSError:
        return False
    return "Free Software Foundation" in version.stdout and "clang" not in version.stdout


def flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def decide_cuda() -> tuple[bool, str]:
    """Whether to compile the CUDA kernels, and why. Decided from the toolchain, never from a visible GPU."""
    if flag("MIMO_EXT_FORCE_CPU"):
        return False, "MIMO_EXT_FORCE_CPU=1"
    toolkit = CUDA_HOME is not None and Path(CUDA_HOME, "bin", "nvcc").exists()
    cuda_torch = torch.version.cuda is not None
    if flag("FORCE_CUDA"):
        if not (toolkit and cuda_torch):
            sys.exit(
                "mimo_ext: FORCE_CUDA=1 but "
                + ("torch is a CPU-only build" if not cuda_torch else f"no nvcc under CUDA_HOME={CUDA_HOME}")
                + ". Set CUDA_HOME to the toolkit (e.g. /usr/local/cuda) and install a CUDA build of torch."
            )
        return True, "FORCE_CUDA=1"
    if not cuda_torch:
        return False, "torch is a CPU-only build"
    if not toolkit:
        return False, f"no CUDA toolkit found (CUDA_HOME={CUDA_HOME}); set CUDA_HOME to build the CUDA kernels"
    return True, f"CUDA toolkit at {CUDA_HOME} and torch built for CUDA {torch.version.cuda}"


def write_build_info(with_cuda: bool, arch_list: str | None) -> None:
    """Record what the library was built against, so that importing it beside another torch fails clearly."""
    (ROOT / "mimo_ext" / "_build_info.py").write_text(
        "# Written by setup.py at build time; do not edit.\n"
        f"TORCH_VERSION = {torch.__version__!r}\n"
        f"WITH_CUDA = {with_cuda!r}\n"
        f"CUDA_VERSION = {torch.version.cuda if with_cuda else None!r}\n"
        f"CUDA_ARCH_LIST = {arch_list!r}\n"
    )


# No -std flag: torch picks the standard its headers need (C++17 before 2.12, C++20 from 2.12 on), and the
# sources are C++17 so that both build (.ci/check_cxx17.py keeps them so).
def make_extension():
    sources = read_sources()
    with_cuda, reason = decide_cuda()
    debug = flag("MIMO_EXT_DEBUG")
    cxx_flags = ["-O0", "-g"] if debug else ["-O3"]
    # OpenMP makes at::parallel_for run on torch's thread pool (torch ships and loads libgomp itself).
    cxx_flags += ["-fopenmp"]
    # sqrt without the errno branch: lets the compiler vectorise the AdamW update loop (nothing here reads errno).
    cxx_flags += ["-fno-math-errno"]
    # No a * b + c -> FMA contraction: the AVX2 / AVX-512 variants of the CPU loops (csrc/cpu/cpu_isa.h) then give
    # bit-identical results to the baseline build, so a result does not depend on the variant chosen. (The libm
    # calls left in them, smooth_max's per-row log, are glibc's own choice per CPU, the same for every variant.)
    cxx_flags += ["-ffp-contract=off"]
    # GCC unswitches a loop on a loop-invariant flag (maximize, nesterov, ...) only below 50 instructions by default;
    # the half-type step loops, with their conversions, are longer, so they kept a select on a scalar bool, which
    # GCC 12 cannot vectorise: those loops ran scalar (benchmarks/NOTES.md, session 4). Same operations, same bits.
    if compiler_is_gcc():
        cxx_flags += [UNSWITCH_FLAG]
    arch_list = None
    if with_cuda:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCH_LIST
        arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST", "the visible GPU's")
        nvcc_flags = ["-O0", "-g", "-G"] if debug else ["-O3", "-lineinfo"]
        extension = CUDAExtension(
            name="mimo_ext._C",
            sources=sources["cpu"] + sources["cuda"],
            extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
            extra_link_args=["-fopenmp"],
        )
    else:
        extension = CppExtension(
            name="mimo_ext._C",
            sources=sources["cpu"],
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=["-fopenmp"],
        )
    print(
        f"mimo_ext build: CUDA kernels {'ON' if with_cuda else 'OFF'} ({reason})"
        + (f"; TORCH_CUDA_ARCH_LIST={arch_list}" if with_cuda else "")
        + f"; torch {torch.__version__}",
        flush=True,
    )
    write_build_info(with_cuda, arch_list)
    return extension


setup(
    packages=find_packages(include=["mimo_ext", "mimo_ext.*"]),
    ext_modules=[make_extension()],
    cmdclass={"build_ext": BuildExtension},
)
