"""Stop 18: GB/s of reading a GEMV's weights in its access pattern, row-major (the planes now)
against tile-major, by steps in flight and resident warps; graphs of distinct buffers, PDL on."""
import itertools
from pathlib import Path
import torch
from impdiff.kernels import cuda_driver
from impdiff.kernels.launch import sm_count

dev = torch.device("cuda")
SRC = Path(__file__).with_name("pattern_read.cu")
sms = sm_count(dev)
out = torch.zeros(1, dtype=torch.int32, device=dev)
# (rows, row bytes): wo 4096 x 2 KB, gate/up 28672 x 2 KB, ffn_down 4096 x 7 KB (Q4_K words)
for rows, row_bytes, label in ((4096, 2048, "wo"), (5120, 2048, "q+k"), (28672, 2048, "gate/up"),
                               (4096, 7168, "down")):
    nbytes = rows * row_bytes
    count = max(2, min(16, int(1.5e9 // nbytes)))
    bufs = [torch.empty(nbytes, dtype=torch.uint8, device=dev) for _ in range(count)]
    res = []
    for layout, stages, threads, per_sm in itertools.product((0, 1), (1, 2, 4), (128, 256), (1, 2, 4, 8)):
        k = cuda_driver.Kernel(cuda_driver.compile_cubin(SRC, "sm_90", dict(LAYOUT=layout, STAGES=stages)),
                               "pattern_read", dev)
        if k.blocks_per_sm(threads, 0) < per_sm:
            continue
        groups = rows // 16
        blocks = min(sms * per_sm, -(-groups // (threads // 32)))
        launch = lambda b: k((blocks, 1), threads, 0, torch.cuda.current_stream().cuda_stream, b, groups, row_bytes, out, pdl=True)
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
        res.append((5 * count * nbytes / (e0.elapsed_time(e1) * 1e-3) / 1e9, layout, stages, threads, per_sm))
    for layout in (0, 1):
        top = sorted([r for r in res if r[1] == layout], reverse=True)[:3]
        print(f"{label:8s} {nbytes / 1e6:5.1f} MB layout {'row-major ' if layout == 0 else 'tile-major'}: " +
              "  ".join(f"{g:5.0f} ({s} steps, {t} thr, {p}/SM)" for g, _, s, t, p in top), flush=True)
    for stages in (1, 2, 4):
        pick = {l: max(r[0] for r in res if r[1] == l and r[2] == stages) for l in (0, 1)}
        print(f"{label:8s}   best at {stages} steps in flight: row-major {pick[0]:.0f}, tile-major {pick[1]:.0f}", flush=True)
    del bufs
