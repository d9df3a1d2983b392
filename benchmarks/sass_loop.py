"""Instructions a weight value in the tensor-core K-quant GEMVs' main loop, from their sm_90 SASS.

    python benchmarks/sass_loop.py [--config 8/2/1/1] [--act silu] [--arch sm_90]
        [--flags ROPE] [--min-blocks 3]

Needs nvcc and cuobjdump (CUDA_HOME, or the copy Triton ships), no GPU. Compiles each kernel of
`mma_gemv.SOURCES` as the launcher would, finds the innermost loop holding its mma
instructions, and divides the loop's instructions by the weight values its mmas take a lane:
128 a warp an `HMMA.16816` (f16: 8 weight rows x 16), 512 an `IMMA.16832` (i8 Q4_K: 16 rows x
32), 256 an `IMMA.16816` (i8 Q6_K: 16 rows x 16).
Stop 19 found the f16 GEMV held by this count, not by its loads (reports/gpu-h100-fast-path),
so it is the figure to lower between GPU runs; `impdiff bench` is the one that decides.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from impdiff.kernels import cuda_driver, mma_gemv

VALUES_PER_MMA = {"HMMA.16816": 128, "IMMA.16832": 512, "IMMA.16816": 256}
_LINE = re.compile(r"\s+/\*([0-9a-f]+)\*/\s+(.*?)\s*;")


def cuobjdump() -> str:
    nvcc = cuda_driver.nvcc_path()
    candidates = [Path(nvcc).with_name("cuobjdump")] if nvcc else []
    try:
        import triton
        candidates.append(Path(triton.__file__).parent / "backends/nvidia/bin/cuobjdump")
    except ImportError:
        pass
    found = next((str(c) for c in candidates if c.is_file()), shutil.which("cuobjdump"))
    if found is None:
        raise SystemExit("sass_loop: no cuobjdump (set CUDA_HOME, or install triton)")
    return found


def opcode(text: str, shape: bool = False) -> str:
    """The instruction's name (with `shape`, its first suffix too: an mma's shape)."""
    return ".".join(re.sub(r"^@!?U?P\w+\s+", "", text).split()[0].split(".")[:2 if shape else 1])


def loop_mix(sass: str) -> tuple[int, float, collections.Counter]:
    """The innermost backward branch whose body holds mma instructions: its length, the weight
    values its mmas take a lane, and its mix."""
    code = [(int(m.group(1), 16), m.group(2)) for m in map(_LINE.match, sass.splitlines()) if m]
    best = None
    for at, text in code:
        jump = re.search(r"BRA (0x[0-9a-f]+)", text)
        if jump and int(jump.group(1), 16) < at:
            body = [t for a, t in code if int(jump.group(1), 16) <= a <= at]
            if any(opcode(t, True) in VALUES_PER_MMA for t in body) and (
                    best is None or len(body) < len(best)):
                best = body
    if best is None:
        raise SystemExit("sass_loop: no loop with mma instructions in the kernel")
    values = sum(VALUES_PER_MMA.get(opcode(t, True), 0) for t in best) / 32
    return len(best), values, collections.Counter(opcode(t) for t in best)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="8/2/1/1", help="warps/row_blocks/split_k/k_warps")
    ap.add_argument("--act", default="silu", choices=[k for k in mma_gemv.ACT_CODES if k] +
                    ["none"], help="the gated epilogue's activation, or none")
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--flags", default="", help="the i8 kernel's optional epilogue: ROPE")
    ap.add_argument("--min-blocks", type=int, help="its register cap (MIN_BLOCKS)")
    args = ap.parse_args()
    warps, row_blocks, split_k, k_warps = map(int, args.config.split("/"))
    act = mma_gemv.ACT_CODES[None if args.act == "none" else args.act]
    flags = frozenset(f for f in args.flags.split(",") if f)
    for operands, fmt in ((kind, fmt) for kind, fmts in mma_gemv.MULTIPLIES.items()
                          for fmt in fmts if kind == "i8" or not flags):
        source = mma_gemv.SOURCES[operands]
        cfg = mma_gemv.MmaConfig(warps, row_blocks, split_k, k_warps, operands)
        defines = mma_gemv.defines(cfg, act, True, fmt, flags, args.min_blocks)
        with tempfile.TemporaryDirectory() as tmp:
            cubin = Path(tmp) / "k.cubin"
            cubin.write_bytes(cuda_driver.compile_cubin(source, args.arch, defines))
            sass, usage = (subprocess.run([cuobjdump(), option, str(cubin)], capture_output=True,
                                          text=True, check=True).stdout
                           for option in ("-sass", "-res-usage"))
        registers = re.search(r"REG:(\d+)", usage).group(1)
        length, values, mix = loop_mix(sass)
        top = ", ".join(f"{op} {n}" for op, n in mix.most_common(8))
        variant = "".join(f" {f}" for f in sorted(flags)) + (
            f" MIN_BLOCKS={args.min_blocks}" if args.min_blocks else "")
        print(f"{operands} {fmt}{variant} {args.config} act={args.act}: {registers} registers, "
              f"loop of {length} instructions over {values:.0f} weight values a lane: "
              f"{length / values:.2f} a value ({top})")


if __name__ == "__main__":
    main()
