"""Stop 17 e11: is the mma GEMV limited by its DRAM access order? The same kernel reading the
q plane with the 8 rows of a row block interleaved per super-block (each warp then streams one
contiguous range) against the row-major plane. Timing only (the interleaved products are of
permuted weights)."""
import sys
import numpy as np, torch
sys.path.insert(0, "benchmarks")
from gemv_sweep import graph_gbs, clone
from impdiff.engine.packed import pack_gguf
from impdiff.kernels import cuda_driver, mma_gemv
from impdiff.testing.shapes import T, _random_blocks

rng = np.random.default_rng(0)
for name, rows, cols, act in (("gate/up gated", 28672, 4096, 1), ("ffn_down", 4096, 14336, 0),
                              ("Q+K+V", 6144, 4096, 0)):
    w = pack_gguf(_random_blocks(rng, T.Q4_K, rows, cols), T.Q4_K, (rows, cols), "cuda")
    copies = [w] + [clone(w) for _ in range(200_000_000 // w.nbytes)]
    x = torch.randn(cols, device="cuda")
    for warps, rb, split in ((8, 2, 1), (4, 1, 1), (4, 1, 4), (8, 1, 4), (4, 2, 1)):
        if act and split > 1:
            continue
        line = []
        for inter in (0, 1):
            defines = dict(WARPS=warps, ROW_BLOCKS=rb, PREFETCH=0, MIN_BLOCKS=1, ACT=act)
            if inter:
                defines["INTERLEAVED"] = 1
            k = cuda_driver.Kernel(cuda_driver.compile_cubin(mma_gemv.SOURCE, "sm_90", defines),
                                   "q4k_mma_gemv", x.device)
            cfg = mma_gemv.MmaConfig(warps, rb, split)
            per_split = -(-w.tiles // split); splits = -(-w.tiles // per_split)
            rows_out = rows // 2 if act else rows
            tasks = -(-rows_out // ((4 if act else 8) * rb))
            shared = per_split * mma_gemv.SHARED_PER_TILE
            resident = k.blocks_per_sm(32 * warps, shared) * 132
            blocks = max(1, min(-(-tasks // warps), resident // splits))
            out = torch.empty((splits, rows_out), device="cuda")
            def run(v, k=k, shared=shared, blocks=blocks, per_split=per_split, splits=splits,
                    inter=inter):
                k((blocks, splits), 32 * warps, shared, torch.cuda.current_stream().cuda_stream,
                  x, out, v.q, v.s, v.b, v.sd, v.n, v.tiles, per_split,
                  v.tiles if inter else v.q.stride(0), v.s.stride(0), v.b.stride(0),
                  v.sd.stride(0) // 2, 1.0, mma_gemv.F16_1024)
                if splits > 1:
                    out.sum(0)
            line.append(graph_gbs(copies, x, None, gemv=run))
        print(f"{name} {warps}/{rb}/{split}: row-major {line[0]:.0f} GB/s, interleaved {line[1]:.0f}",
              flush=True)
