"""Stop 19: the tensor-core GEMV's weight feed with and without its arithmetic (NOMATH, from
nomath_probe.patch), register loads against the bulk-copy ring, on the gated gate/up shape and
Q4_K ffn_down. GB/s of the weight bytes, timed as gemv_sweep.py times the sweep."""
import sys
import numpy as np
sys.path.insert(0, "benchmarks")
import gemv_sweep
from impdiff.kernels import cuda_driver, mma_gemv
from impdiff.testing.shapes import T

orig = cuda_driver.compile_cubin
rng = np.random.default_rng(0)
for rows, cols, act, configs in [
        (28672, 4096, "silu", [(8, 2, 1, 1), (4, 2, 1, 1), (8, 1, 1, 1, 2, 4), (8, 1, 1, 1, 4, 4),
                               (8, 2, 1, 1, 2, 4), (8, 1, 1, 1, 2, 8), (4, 2, 1, 1, 2, 8),
                               (4, 1, 1, 1, 2, 16), (4, 2, 1, 1, 4, 4), (2, 2, 1, 1, 4, 8),
                               (16, 1, 1, 1, 2, 4), (16, 2, 1, 1, 1, 4), (16, 1, 1, 2, 2, 4)]),
        (4096, 14336, None, [(8, 2, 1, 8), (8, 1, 4, 1), (8, 1, 1, 4, 2, 4), (8, 1, 1, 8, 2, 4),
                             (4, 1, 1, 4, 2, 8), (8, 2, 1, 8, 2, 4)])]:
    w, copies, x = gemv_sweep.random_inputs(rng, T.Q4_K, rows, cols)
    for nomath in (0, 1):
        cuda_driver.compile_cubin = lambda src, arch, d, n=nomath: orig(src, arch, {**d, "NOMATH": n})
        mma_gemv._kernel.cache_clear()
        for c in configs:
            cfg = mma_gemv.MmaConfig(*c)
            try:
                gbs = gemv_sweep.graph_gbs(copies, lambda v: mma_gemv.gemv(x, v, act=act, config=cfg))
                print(f"{rows}x{cols} nomath={nomath} {'/'.join(map(str, c))}: {gbs:.0f} GB/s", flush=True)
            except RuntimeError as exc:
                print(f"{rows}x{cols} nomath={nomath} {c}: {str(exc).splitlines()[0]}")
