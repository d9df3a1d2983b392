"""Decode-like chain of GEMVs in one CUDA graph: time per chain with PDL off/on (env GEMV_PDL)."""
import sys, numpy as np, torch
from impdiff.engine.packed import pack_gguf
from impdiff.kernels.quant_matmul import qgemv
from impdiff.testing.shapes import T, _random_blocks
rng = np.random.default_rng(0)
shapes = [("Q4_K", 6144, 4096), ("Q4_K", 4096, 4096), ("Q4_K", 28672, 4096), ("Q6_K", 4096, 14336)]
ws = [pack_gguf(_random_blocks(rng, T[q], n, k), T[q], (n, k), "cuda") for q, n, k in shapes]
xs = {k: torch.randn(k, device="cuda") for _, _, k in shapes}
outs = [torch.empty(w.n, device="cuda") for w in ws]
def chain():
    for _ in range(8):
        for w, o in zip(ws, outs):
            qgemv(xs[w.k], w, out=o)
chain(); torch.cuda.synchronize()
g = torch.cuda.CUDAGraph()
with torch.cuda.graph(g):
    chain()
g.replay(); torch.cuda.synchronize()
ref = [o.clone() for o in outs]
s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
times = []
for _ in range(5):
    s.record(); [g.replay() for _ in range(10)]; e.record(); torch.cuda.synchronize(); times.append(s.elapsed_time(e) / 10)
nbytes = 8 * sum(w.nbytes for w in ws)
print(f"{sys.argv[1]}: {min(times)*1e3:.1f} us per chain of 32 GEMVs, {nbytes / (min(times) * 1e6):.0f} GB/s; {np.median(times)*1e3:.1f} us median")
torch.save([o.cpu() for o in outs], f"/tmp/outs_{sys.argv[1]}.pt")
