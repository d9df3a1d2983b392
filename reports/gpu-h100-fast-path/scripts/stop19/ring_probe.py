"""Stop 19: the tensor-core GEMV's weight feed with and without its arithmetic (NOMATH, from
nomath_probe.patch), register loads against the bulk-copy ring, on the gated gate/up shape and
Q4_K ffn_down. GB/s of the weight bytes, timed as gemv_sweep.py times the sweep. argv[2]: NOMATH values to run (default 0,1). Writes argv[1]:
the shipped table with the gated product's fastest config (with arithmetic) for a decode A/B."""
import json
import sys
import numpy as np
sys.path.insert(0, "benchmarks")
import gemv_sweep
from impdiff.kernels import cuda_driver, mma_gemv
from impdiff.testing.shapes import T

orig = cuda_driver.compile_cubin
rng = np.random.default_rng(0)
best = {}
for rows, cols, act, configs in [
        (28672, 4096, "silu", [(8, 2, 1, 1), (4, 2, 1, 1), (8, 1, 1, 1, 2, 4), (8, 1, 1, 1, 4, 4),
                               (8, 2, 1, 1, 2, 4), (8, 1, 1, 1, 2, 8), (4, 2, 1, 1, 2, 8),
                               (4, 1, 1, 1, 2, 16), (4, 2, 1, 1, 4, 4), (2, 2, 1, 1, 4, 8),
                               (16, 1, 1, 1, 2, 4), (16, 2, 1, 1, 1, 4), (16, 1, 1, 2, 2, 4)]),
        (4096, 14336, None, [(8, 2, 1, 8), (8, 1, 4, 1), (8, 1, 1, 4, 2, 4), (8, 1, 1, 8, 2, 4),
                             (4, 1, 1, 4, 2, 8), (8, 2, 1, 8, 2, 4)])]:
    w, copies, x = gemv_sweep.random_inputs(rng, T.Q4_K, rows, cols)
    for nomath in [int(v) for v in sys.argv[2].split(",")] if len(sys.argv) > 2 else (0, 1):
        cuda_driver.compile_cubin = lambda src, arch, d, n=nomath: orig(src, arch, {**d, "NOMATH": n})
        mma_gemv._kernel.cache_clear()
        gemv_sweep.prebuild(x.device, [mma_gemv.MmaConfig(*c) for c in configs],
                            mma_gemv.ACT_CODES[act])
        for c in configs:
            cfg = mma_gemv.MmaConfig(*c)
            try:
                gbs = gemv_sweep.graph_gbs(copies, lambda v: mma_gemv.gemv(x, v, act=act, config=cfg))
                print(f"{rows}x{cols} nomath={nomath} {'/'.join(map(str, c))}: {gbs:.0f} GB/s", flush=True)
                if act and not nomath and gbs > best.get("gbs", 0):
                    best = {"gbs": gbs, "config": list(c)}
            except RuntimeError as exc:
                print(f"{rows}x{cols} nomath={nomath} {c}: {str(exc).splitlines()[0]}")
table = mma_gemv.tuning_table(mma_gemv.TABLE_ENV, ".mma.json")
json.dump({**table, "q4_k gated 28672 4096": best["config"]}, open(sys.argv[1], "w"))
print("gated pick:", best)
