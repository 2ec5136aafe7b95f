"""The sources must stay C++17: torch < 2.12 compiles extensions with -std=c++17 (2.12 and later with C++20), and
we support both. CI builds against one torch only, so this check stands in for the other:

1. a scan of every file under csrc/ (comments and string literals removed) for C++20-only library names, headers,
   keywords and syntax;
2. each header under csrc/ compiled with `c++ -std=c++17 -fsyntax-only` against the installed torch's headers:
   an error located in one of our files fails; a header whose C++17 errors lie in torch's own headers (torch >= 2.12
   needs C++20 itself) cannot be checked that way and is left to the scan.

    python .ci/check_cxx17.py          (exit status 1 on a finding)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"

CXX20_ONLY = [
    (
        r"\bstd::(bit_cast|remove_cvref(_t)?|span|ranges|views|format|source_location|jthread|stop_token|latch|barrier"
        r"|counting_semaphore|binary_semaphore|is_constant_evaluated|to_array|ssize|midpoint|lerp|erase_if|bit_width"
        r"|popcount|countl_zero|countr_zero|countl_one|countr_one|has_single_bit|bit_ceil|bit_floor|numbers|endian"
        r"|type_identity(_t)?|unwrap_reference|assume_aligned|identity|strong_ordering|weak_ordering|partial_ordering"
        r"|u8string|make_shared_for_overwrite|bind_front|atomic_ref|cmp_less|cmp_equal|in_range)\b",
        "C++20 library name",
    ),
    (
        r"#\s*include\s*<(bit|span|ranges|concepts|compare|format|numbers|source_location|coroutine|version|barrier"
        r"|latch|semaphore|stop_token|syncstream)>",
        "C++20 header",
    ),
    (r"\b(consteval|constinit|co_await|co_yield|co_return|requires|concept|char8_t)\b", "C++20 keyword"),
    (r"<=>", "three-way comparison"),
    (r"\busing\s+enum\b", "using enum"),
    (r"\[\[\s*(likely|unlikely|no_unique_address)\s*\]\]", "C++20 attribute"),
    (r"\.(contains|starts_with|ends_with)\s*\(", "C++20 member function"),
    (r"[{,]\s*\.[A-Za-z_]\w*\s*=", "designated initializer"),
    (r"\[[^\]\[]*\]\s*<\s*(typename|class|auto|int)\b", "template lambda"),
]


def strip_comments_and_strings(text: str) -> str:
    pattern = re.compile(r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'', re.S)
    return pattern.sub(lambda m: " " if m.group(0).startswith("/") else '""', text)


def scan() -> list[str]:
    findings = []
    for path in sorted(CSRC.rglob("*")):
        if path.suffix not in (".h", ".cuh", ".cpp", ".cu"):
            continue
        code = strip_comments_and_strings(path.read_text())
        for pattern, what in CXX20_ONLY:
            for m in re.finditer(pattern, code):
                line = code.count("\n", 0, m.start()) + 1
                findings.append(f"{path.relative_to(ROOT)}:{line}: {what}: {m.group(0).strip()}")
    return findings


def compile_headers() -> tuple[list[str], list[str]]:
    import torch.utils.cpp_extension as ext

    includes = [f"-I{p}" for p in ext.include_paths()] + [f"-I{sysconfig.get_paths()['include']}"]
    findings, unchecked = [], []
    for header in sorted(CSRC.rglob("*.h")):
        if "tests" in header.parts:
            continue
        result = subprocess.run(
            [os.environ.get("CXX", "c++"), "-std=c++17", "-fsyntax-only", "-x", "c++", *includes, str(header)],
            capture_output=True,
            text=True,
        )
        errors = [line for line in result.stderr.splitlines() if ": error:" in line]
        ours = [line for line in errors if line.startswith(str(CSRC))]
        if ours and len(ours) == len(errors):
            findings += [f"{header.relative_to(ROOT)} as C++17: {line}" for line in ours[:5]]
        elif errors:
            unchecked.append(str(header.relative_to(ROOT)))
    return findings, unchecked


def main() -> int:
    findings = scan()
    compiled, unchecked = compile_headers()
    findings += compiled
    for finding in findings:
        print(f"FAIL {finding}")
    print(
        f"check_cxx17: {len(findings)} finding(s); headers compiled as C++17 against this torch, except "
        f"{len(unchecked)} whose torch includes need C++20 here (scanned only): {', '.join(unchecked) or 'none'}"
    )
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
