"""GB/s of qgemv per shape over a small config grid (experiment; engine bytes)."""
import itertools, sys, numpy as np, torch
sys.path.insert(0, "benchmarks")
from gemv_sweep import graph_gbs, clone
from impdiff.engine.packed import pack_gguf
from impdiff.kernels.quant_matmul import GemvConfig
from impdiff.testing.shapes import T, _random_blocks
label = sys.argv[1]
shapes = [("Q4_K", 28672, 4096), ("Q4_K", 6144, 4096), ("Q4_K", 4096, 14336), ("Q6_K", 4096, 14336), ("Q6_K", 1024, 4096), ("Q6_K", 128256, 4096), ("Q8_0", 28672, 4096)]
grid = [(bn, l, w) for bn in (1, 2, 4) for l in (2, 4) for w in (1, 2, 4)]
rng = np.random.default_rng(0)
for name, n, k in shapes:
    qt = T[name]
    w = pack_gguf(_random_blocks(rng, qt, n, k), qt, (n, k), "cuda")
    copies = [w] + [clone(w) for _ in range(200_000_000 // w.nbytes)]
    x = torch.randn(k, device="cuda")
    res = []
    for bn, lanes, warps in grid:
        cfg = GemvConfig(bn, lanes, 32 * warps // lanes, 1, warps)
        if w.tiles < cfg.tiles or w.fmt.group < 4 * lanes:
            continue
        try:
            res.append((graph_gbs(copies, x, cfg), cfg))
        except Exception as e:
            pass
    res.sort(key=lambda r: -r[0])
    print(f"{label} {name} {n}x{k}: " + "; ".join(f"{c.block_n}/{c.lanes}/{c.num_warps} {g:.0f}" for g, c in res[:5]), flush=True)
