"""Stop 17 e12: the read-bandwidth ceiling in the sweep's own harness: torch's sum over the same
weight bytes (every plane, as float32 words), per decode shape, and over 1 GB."""
import sys
import numpy as np, torch
sys.path.insert(0, "benchmarks")
from gemv_sweep import graph_gbs, clone
from impdiff.engine.packed import pack_gguf
from impdiff.testing.shapes import T, _random_blocks

rng = np.random.default_rng(0)
out = torch.empty((), device="cuda")
def read_all(v):
    for p in [p for p in v.planes() if p is not None]:
        torch.sum(p.reshape(-1).view(torch.float32), dim=0, out=out)
for name, qt, rows, cols in (("gate/up", T.Q4_K, 28672, 4096), ("ffn_down", T.Q4_K, 4096, 14336),
                             ("Q+K+V", T.Q4_K, 6144, 4096), ("wo", T.Q4_K, 4096, 4096),
                             ("Q6_K ffn_down", T.Q6_K, 4096, 14336)):
    w = pack_gguf(_random_blocks(rng, qt, rows, cols), qt, (rows, cols), "cuda")
    copies = [w] + [clone(w) for _ in range(200_000_000 // w.nbytes)]
    x = torch.randn(cols, device="cuda")
    flat = [torch.empty(v.nbytes // 4, device="cuda") for v in copies]  # one tensor a copy
    class Flat:  # graph_gbs counts .nbytes
        def __init__(self, t): self.t, self.nbytes = t, t.numel() * 4
    print(f"{name} {rows}x{cols} ({w.nbytes/1e6:.1f} MB): one torch.sum over as many bytes "
          f"{graph_gbs([Flat(t) for t in flat], x, None, gemv=lambda f: torch.sum(f.t, dim=0, out=out)):.0f} GB/s",
          flush=True)
big = [torch.ones(256 * 1024 * 1024, device="cuda") for _ in range(2)]
for t in big: torch.sum(t, dim=0, out=out)
torch.cuda.synchronize()
a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
a.record()
for _ in range(5):
    for t in big: torch.sum(t, dim=0, out=out)
b.record(); torch.cuda.synchronize()
print(f"torch.sum over 1 GB tensors: {5 * 2 * 2**30 / (a.elapsed_time(b) * 1e6):.0f} GB/s")
