"""Compile every kernel for a GPU target without a GPU: `python -m impdiff.kernels.compile_check`.

Triton's interpreter (the CPU tests) runs kernels as numpy and accepts code the compiler
rejects, so this builds each kernel, for each storage format and the tile configs the launchers
use, down to machine code for sm_90 (ptxas ships with Triton), and reports what failed and how
many shared-memory stores each kernel's code has (a layout conversion that moves data between
threads goes through shared memory; the GEMV should have none in its loop).
Run without TRITON_INTERPRET.
"""

from __future__ import annotations

import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from . import activation, attention, norm_rope, quant_matmul, stats

PLANE_TYPES = {  # format -> pointer types of q, s, b, sd, h
    "q8_0": ("*i32", "*fp16", "*i32", "*i32", "*i32"),
    "q4_0": ("*i32", "*fp16", "*i32", "*i32", "*i32"),
    "q4_1": ("*i32", "*fp16", "*fp16", "*i32", "*i32"),
    "q5_0": ("*i32", "*fp16", "*i32", "*i32", "*i32"),
    "q5_1": ("*i32", "*fp16", "*fp16", "*i32", "*i32"),
    "q4_k": ("*i32", "*u8", "*u8", "*fp16", "*i32"),
    "q5_k": ("*i32", "*u8", "*u8", "*fp16", "*i32"),
    "q6_k": ("*i32", "*i8", "*i32", "*fp16", "*i32"),
    "nvfp4": ("*i32", "*fp16", "*i32", "*i32", "*i32"),
}


def _compile(fn, types: list[str], constexprs: dict, num_warps: int = 4):
    names = fn.arg_names
    sig = dict(zip(names, types + ["constexpr"] * (len(names) - len(types))))
    # what the launcher's specialisation tells the compiler: pointers and strides divisible by 16
    # (tuple arguments are left without)
    div = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names)
           if isinstance(sig[n], str) and (sig[n].startswith("*") or n.startswith("stride"))}
    return triton.compile(ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=div),
                          target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})


def check() -> list[str]:
    failures, report = [], []

    def attempt(label, *args, **kwargs):
        try:
            kernel = _compile(*args, **kwargs)
            report.append(f"{label}: ok, {kernel.asm['ptx'].count('st.shared')} shared-memory "
                          f"stores")
        except Exception as exc:  # the compiler's own message is the point
            failures.append(f"{label}: {type(exc).__name__}: {str(exc).splitlines()[-1][:300]}")

    q = quant_matmul
    for name, planes in PLANE_TYPES.items():
        fa = q._fmt_args(q.FORMATS[name])
        # (rows, lanes, warps, unmasked, gated epilogue's activation or 0); the gated silu
        # variant as a programmatic dependent launch (kernels/launch.py)
        for bn, lanes, warps, even, act in ((1, 2, 1, False, 0), (4, 4, 1, True, 0),
                                            (4, 4, 2, False, 1), (8, 2, 1, True, 2)):
            attempt(f"qgemv {name} {bn}/{lanes}/{warps}{' even' if even else ''}"
                    f"{f' gated {act}' if act else ''}", q._qgemv_kernel,
                    ["*fp32", "*fp32", *planes, "i32", "i32", "i32", "i32", "fp32", "i32"]
                    + ["i32"] * 5,
                    dict(fa, BLOCK_N=bn, NT=32 * warps // lanes, L=lanes, EVEN=even, ACT=act,
                         PDL=act == 1),
                    num_warps=warps)
        attempt(f"dequant {name}", q._dequant_kernel,
                ["*fp16", *planes, "i32", "i32", "i32", "fp32"] + ["i32"] * 5,
                dict(fa, BLOCK_N=16, NT=4))
    # (head dim, query rows, key tile, softcap, splits): prefill, one-token steps
    for d, bm, bn, softcap, splits in ((64, 64, 64, False, 1), (128, 16, 128, False, 1),
                                       (256, 16, 32, True, 4)):
        attempt(f"attention D={d} {bm}x{bn}", attention._attention_kernel,
                ["*fp32", "*fp16", "*fp16", "*i32", "*fp32", "*fp32", "*fp32", "i32", "fp32",
                 "fp32", "i32"] + ["i32"] * 10,
                dict(GROUP=4, D=d, BLOCK_M=bm, BLOCK_N=bn, SOFTCAP=softcap, SPLITS=splits,
                     PDL=splits > 1))
    attempt("residual_norm", norm_rope._residual_norm_kernel, ["*fp32"] * 6 + ["i32", "fp32"],
            dict(HAS_H=True, HAS_POST=True, HAS_W=True, BLOCK=1024, PDL=True))
    rope_types = (["*fp32", "*fp32", "*fp32", "*i32", "*fp32", "*fp16", "*fp16", "*fp32",
                   "*fp32", "fp32"] + ["i32"] * 11)
    for n_rot, norm in ((64, False), (128, True), (0, False)):
        attempt(f"rope n_rot={n_rot}{' norm' if norm else ''}", norm_rope._rope_kernel,
                rope_types, dict(N_ROT=n_rot, D=128, NEOX=False, AT_POS=True, NORM=norm,
                                 PDL=norm),
                num_warps=1)
    attempt("gated activation", activation._gated_kernel, ["*fp32"] * 3 + ["i32"] * 3,
            dict(ACT=2, BLOCK=1024))
    attempt("row_stats", stats._row_stats_kernel,
            [("*fp32", "*fp16", "*fp32"), ("i32",) * 3, "*fp32", "i32"],
            dict(NS=(640, 256, 262144), BLOCKS=(1024, 256, 4096)))
    print("\n".join(report))
    return failures


if __name__ == "__main__":
    failed = check()
    print("\n".join(failed) or "all kernels compiled")
    sys.exit(1 if failed else 0)
