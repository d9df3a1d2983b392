"""Stop 17 e1: the Q4_K tensor-core GEMV on the GPU: correctness against the reference, then
GB/s per 8B Q4_K decode shape (config sweep) against the tuned Triton GEMV."""
import itertools, sys, time
import numpy as np, torch
from impdiff.engine.packed import pack_gguf
from impdiff.kernels import mma_gemv
from impdiff.kernels.quant_matmul import (dequantize_reference, qgemv, qgemv_gated, _config)
from impdiff.kernels.activation import gated_activation
from impdiff.testing.shapes import T, _random_blocks

rng = np.random.default_rng(0)
dev = torch.device("cuda")

def weight(rows, cols):
    return pack_gguf(_random_blocks(rng, T.Q4_K, rows, cols), T.Q4_K, (rows, cols), "cuda")

def rel(a, b):
    return ((a.double() - b).abs().max() / b.abs().max()).item()

t0 = time.time()
print("== correctness (max |err| / max |ref|), mma vs triton")
for rows, cols in ((1024, 4096), (1032, 4096), (5120, 4096), (4096, 14336), (2048, 768)):
    w = weight(rows, cols)
    ref_w = dequantize_reference(w).double()
    for scale in (1.0, 3e4, 1e-5):
        x = torch.randn(cols, device=dev) * scale
        x[256:512] = 0.0  # a super-block of zeros
        ref = ref_w @ x.double()
        tri = qgemv(x, w, config=_config(x, w, None))
        outs = {f"split{s}": mma_gemv.gemv(x, w, config=mma_gemv.MmaConfig(4, 1, s))
                for s in (1, 4) if w.tiles >= s}
        outs["rb4"] = mma_gemv.gemv(x, w, config=mma_gemv.MmaConfig(2, 4, 1))
        outs["default"] = qgemv(x, w)
        print(f"{rows}x{cols} x*{scale:g}: triton {rel(tri, ref):.2e} " +
              " ".join(f"{k} {rel(v, ref):.2e}" for k, v in outs.items()), flush=True)
for act in ("silu", "gelu_tanh"):
    w = weight(2 * 1024, 4096)
    x = torch.randn(4096, device=dev)
    y = (dequantize_reference(w).double() @ x.double()).float()
    ref = gated_activation(act, y[None, :1024], y[None, 1024:])[0].double()
    got = qgemv_gated(x, w, act)
    got4 = mma_gemv.gemv(x, w, act=act, config=mma_gemv.MmaConfig(2, 4, 1))
    print(f"gated rb4 {act}: {rel(got4, ref):.2e}")
    tri = qgemv_gated(x, w, act, config=_config(x, w, None))
    print(f"gated {act}: mma {rel(got, ref):.2e} triton {rel(tri, ref):.2e}")
print(f"compile+check {time.time() - t0:.1f} s", flush=True)

def gbs(fn, weights, reps=5):
    for w in weights[:2]:
        fn(w)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for w in weights:
            fn(w)
    g.replay(); torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(reps):
        g.replay()
    b.record(); torch.cuda.synchronize()
    return reps * sum(w.nbytes for w in weights) / (a.elapsed_time(b) * 1e6)

def clone(w):
    from dataclasses import replace
    return replace(w, q=w.q.clone(), s=w.s.clone(), b=w.b.clone(), sd=w.sd.clone())

print("== GB/s of the engine's bytes (graph of copies past L2)")
SHAPES = [("gate/up gated", 28672, 4096, "silu"), ("gate/up plain", 28672, 4096, None),
          ("Q+K+V", 6144, 4096, None), ("Q+K", 5120, 4096, None), ("wo", 4096, 4096, None),
          ("ffn_down", 4096, 14336, None)]
for name, rows, cols, act in SHAPES[:0] if "--no-sweep" in sys.argv else SHAPES:
    w = weight(rows, cols)
    copies = [w] + [clone(w) for _ in range(200_000_000 // w.nbytes)]
    x = torch.randn(cols, device=dev)
    if act:
        tri = gbs(lambda v: qgemv_gated(x, v, act, config=_config(x, v, None)), copies)
    else:
        tri = gbs(lambda v: qgemv(x, v, config=_config(x, v, None)), copies)
    res = []
    for warps, rb, split, mb in itertools.product((1, 2, 4, 8), (1, 2, 4), (1, 2, 4, 8), (1,)):
        if act and split > 1 or w.tiles < split * 2:
            continue
        cfg = mma_gemv.MmaConfig(warps, rb, split, mb)
        try:
            res.append((gbs(lambda v: mma_gemv.gemv(x, v, act=act, config=cfg), copies), cfg))
        except Exception as e:
            print("  ", cfg, type(e).__name__, str(e)[:200])
    res.sort(key=lambda r: -r[0])
    print(f"{name} {rows}x{cols} ({w.nbytes/1e6:.1f} MB): triton {tri:.0f}; mma best " +
          "; ".join(f"{c.warps}/{c.row_blocks}/{c.split_k}/{c.min_blocks} {g:.0f}" for g, c in res[:5]),
          flush=True)
print(f"total {time.time() - t0:.1f} s")
