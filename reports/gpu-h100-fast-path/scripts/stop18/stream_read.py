"""Stop 18: GB/s of a plain streaming read per size (the 8B Q4_K_M step's weight sizes), in a CUDA
graph of 16 launches over distinct buffers, by loads in flight per thread, blocks per SM, PDL."""
import itertools
from pathlib import Path
import torch
from impdiff.kernels import cuda_driver
from impdiff.kernels.launch import sm_count

dev = torch.device("cuda")
SRC = Path(__file__).with_name("stream_read.cu")
sms = sm_count(dev)
out = torch.zeros(1, dtype=torch.int32, device=dev)
for mb in (9.7, 14.5, 33.9, 67.9, 430.0):
    n16 = int(mb * 1e6) // 16
    count = max(2, min(16, int(2.2e9 // (n16 * 16))))
    bufs = [torch.empty(n16 * 16, dtype=torch.uint8, device=dev) for _ in range(count)]
    best = (0, None)
    rows = []
    for unroll, threads, per_sm, pdl in itertools.product((2, 4, 8), (256, 512), (1, 2, 4), (0, 1)):
        k = cuda_driver.Kernel(cuda_driver.compile_cubin(SRC, "sm_90", dict(UNROLL=unroll, PDL=pdl)),
                               "stream_read", dev)
        if k.blocks_per_sm(threads, 0) < per_sm:
            continue
        blocks = min(sms * per_sm, -(-n16 // (threads * unroll)))
        stream = torch.cuda.current_stream().cuda_stream
        launch = lambda b: k((blocks, 1), threads, 0, torch.cuda.current_stream().cuda_stream, b, n16, out, pdl=bool(pdl))
        for b in bufs:
            launch(b)
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for b in bufs:
                launch(b)
        g.replay(); torch.cuda.synchronize()
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        for _ in range(5):
            g.replay()
        e1.record(); torch.cuda.synchronize()
        gbs = 5 * count * n16 * 16 / (e0.elapsed_time(e1) * 1e-3) / 1e9
        rows.append((gbs, unroll, threads, per_sm, pdl))
    rows.sort(reverse=True)
    for pdl in (0, 1):
        top = [r for r in rows if r[4] == pdl][:3]
        print(f"{mb:6.1f} MB x{count} pdl={pdl}: " + "  ".join(
            f"{g:6.0f} GB/s (unroll {u}, {t} thr, {p}/SM)" for g, u, t, p, _ in top), flush=True)
    print(f"{mb:6.1f} MB worst: {rows[-1][0]:.0f} GB/s {rows[-1][1:]}", flush=True)
    del bufs
