"""Stop 18: GB/s of the default GEMV dispatch per 8B Q4_K_M decode shape, L2 bulk prefetch on/off
(graph of distinct weights, as benchmarks/gemv_sweep.py times them)."""
import os, sys
import numpy as np, torch
sys.path.insert(0, "benchmarks")
from gemv_sweep import graph_gbs
from impdiff.engine.packed import pack_gguf
from impdiff.kernels.quant_matmul import qgemv, qgemv_gated
from impdiff.testing.shapes import T, _random_blocks

rng = np.random.default_rng(0)
SHAPES = [("q4_k", 5120, 4096, None), ("q4_k", 6144, 4096, None), ("q6_k", 1024, 4096, None),
          ("q4_k", 4096, 4096, None), ("q4_k", 28672, 4096, "silu"), ("q4_k", 4096, 14336, None),
          ("q6_k", 4096, 14336, None), ("q6_k", 128256, 4096, None)]
for fmt, n, k, act in SHAPES:
    qt = T[fmt.upper()]
    count = max(2, min(16, int(1.5e9 // (n * k))))
    ws = [pack_gguf(_random_blocks(rng, qt, n, k), qt, (n, k), "cuda") for _ in range(count)]
    x = torch.randn(k, device="cuda")
    res = {}
    for pf in ("0", "1"):
        os.environ["IMPDIFF_L2_PREFETCH"] = pf
        fn = (lambda w: qgemv_gated(x, w, act)) if act else (lambda w: qgemv(x, w))
        res[pf] = [graph_gbs(ws, x, None, gemv=fn) for _ in range(2)]
    print(f"{fmt} {n}x{k}{' gated' if act else ''} x{count}: prefetch off "
          f"{'/'.join(f'{v:.0f}' for v in res['0'])}  on {'/'.join(f'{v:.0f}' for v in res['1'])} GB/s",
          flush=True)
    del ws
