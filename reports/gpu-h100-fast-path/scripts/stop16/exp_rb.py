"""Row blocks a program (prefetching the next block's words): per-shape GB/s and 8B decode."""
import dataclasses, sys, time
import numpy as np, torch
sys.path.insert(0, "benchmarks")
from gemv_sweep import graph_gbs, decode_products, clone
from impdiff.engine.packed import pack_gguf
from impdiff.kernels import quant_matmul as qm
from impdiff.testing.shapes import SHAPES, _random_blocks, tensor_types

shape = SHAPES["llama3-8b"]
rng = np.random.default_rng(0)
seen = set()
for kind, qtype, rows, cols in decode_products(tensor_types(shape, "Q4_K_M"), shape.n_layer):
    if (qtype, rows, cols) in seen:
        continue
    seen.add((qtype, rows, cols))
    w = pack_gguf(_random_blocks(rng, qtype, rows, cols), qtype, (rows, cols), "cuda")
    copies = [w] + [clone(w) for _ in range(200_000_000 // w.nbytes)]
    x = torch.randn(cols, device="cuda")
    base = qm.gemv_config(w, qm.sm_count(x.device))
    res = []
    for rb in (1, 2, 4, 8):
        for bn in sorted({base.block_n, 2}):
            cfg = dataclasses.replace(base, row_blocks=rb, block_n=bn)
            res.append(f"{bn}x{rb} {graph_gbs(copies, x, cfg):.0f}")
    print(f"{qtype.name} {rows}x{cols} ({kind}) tuned {base}: " + "; ".join(res), flush=True)
    del copies

from impdiff.engine.fast import FastSession, load_fast_model
orig = qm.gemv_config
for rb in (1, 2, 4):
    qm.gemv_config = lambda w, n, rb=rb: dataclasses.replace(orig(w, n), row_blocks=rb)
    with torch.inference_mode():
        s = FastSession(load_fast_model("/tmp/l8q4.gguf", "cuda", max_ctx=256))
        s.generate_greedy([1, 2, 3], 8)
        best = 0
        for _ in range(3):
            s.reset(); torch.cuda.synchronize(); t0 = time.perf_counter()
            s.generate_greedy([1, 2, 3], 129)
            torch.cuda.synchronize(); best = max(best, 128 / (time.perf_counter() - t0))
    print(f"decode row_blocks={rb}: {best:.1f} t/s (best of 3, 128 tokens after a 3-token prompt)", flush=True)
    del s
    torch.cuda.empty_cache()
