import torch, triton
from impdiff.kernels import norm_rope as nr
for n in (4096, 640, 576):
    x, h, w = (torch.randn(1, n, device="cuda") for _ in range(3))
    y, xo = torch.empty_like(x), torch.empty_like(x)
    for warps in (4, 8, 16, 32):
        def launch():
            nr._residual_norm_kernel[(1,)](x, h, x, w, xo, y, n, 1e-6, HAS_H=True, HAS_POST=False, HAS_W=True,
                                           BLOCK=triton.next_power_of_2(n), num_warps=warps)
        launch(); torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for _ in range(200):
                launch()
        g.replay(); torch.cuda.synchronize()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record(); [g.replay() for _ in range(5)]; e.record(); torch.cuda.synchronize()
        print(f"n={n} warps={warps}: {s.elapsed_time(e) / 1000 * 1e3:.2f} us per launch")
