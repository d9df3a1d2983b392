"""Stop 17 e3: prefetch depth x block shape for the tensor-core Q4_K GEMV; `once` for ncu."""
import itertools, sys
import numpy as np, torch
from dataclasses import replace
from impdiff.engine.packed import pack_gguf
from impdiff.kernels import mma_gemv
from impdiff.kernels.quant_matmul import qgemv_gated, _config
from impdiff.testing.shapes import T, _random_blocks
sys.path.insert(0, ".carry/dev17")
rng = np.random.default_rng(0)
def weight(rows, cols):
    return pack_gguf(_random_blocks(rng, T.Q4_K, rows, cols), T.Q4_K, (rows, cols), "cuda")
def clone(w):
    return replace(w, q=w.q.clone(), s=w.s.clone(), b=w.b.clone(), sd=w.sd.clone())
def gbs(fn, weights, reps=5):
    for w in weights[:2]: fn(w)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for w in weights: fn(w)
    g.replay(); torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(reps): g.replay()
    b.record(); torch.cuda.synchronize()
    return reps * sum(w.nbytes for w in weights) / (a.elapsed_time(b) * 1e6)

if sys.argv[1] == "once":  # ncu: 3 launches of each kernel on gate/up
    w = weight(28672, 4096); x = torch.randn(4096, device="cuda")
    cfg = mma_gemv.MmaConfig(*map(int, sys.argv[2].split("/")))
    for _ in range(3):
        mma_gemv.gemv(x, w, act="silu", config=cfg)
        qgemv_gated(x, w, "silu", config=_config(x, w, None))
    torch.cuda.synchronize(); sys.exit()

SHAPES = [("gate/up gated", 28672, 4096, "silu"), ("Q+K+V", 6144, 4096, None),
          ("wo", 4096, 4096, None), ("ffn_down", 4096, 14336, None)]
for name, rows, cols, act in SHAPES:
    w = weight(rows, cols)
    copies = [w] + [clone(w) for _ in range(200_000_000 // w.nbytes)]
    x = torch.randn(cols, device="cuda")
    res = []
    for warps, rb, split, mb in itertools.product((1, 2, 4, 8), (1, 2, 4), (1, 2, 4), (1,)):
        if act and split > 1:
            continue
        cfg = mma_gemv.MmaConfig(warps, rb, split, mb)
        try:
            res.append((gbs(lambda v: mma_gemv.gemv(x, v, act=act, config=cfg), copies), cfg))
        except Exception as e:
            print("  ", cfg, type(e).__name__, str(e)[:200])
    res.sort(key=lambda r: -r[0])
    by_ahead = {a: round(max(g for g, c in res if c.row_blocks == a)) for a in (1, 2, 4)}
    print(f"{name} {rows}x{cols}: best " + "; ".join(
        f"{c.warps}/{c.row_blocks}/{c.split_k}/{c.min_blocks} {g:.0f}" for g, c in res[:6])
        + f" | best per ahead {by_ahead}", flush=True)
