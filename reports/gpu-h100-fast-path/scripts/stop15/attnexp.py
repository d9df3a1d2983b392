import torch
from impdiff.kernels import attention as A
H, Hkv, D, S = 32, 8, 128, 4096
q = torch.randn(1, H, D, device="cuda")
k = torch.randn(S, Hkv, D, device="cuda").half(); v = torch.randn_like(k)
out = torch.empty((1, 1, H, D), device="cuda")
for ctx in (128, 1024):
    pos = torch.tensor([ctx - 1], device="cuda", dtype=torch.int32)
    ref = None
    for bn in (32, 64, 128):
        for warps in (1, 2, 4, 8):
            def launch():
                A._attention_kernel[(1, Hkv, 1)](q, k, v, pos, out, out, out, 1, 0.088, 0.0, 0,
                    q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
                    out.stride(0), out.stride(1), out.stride(2), 0,
                    GROUP=4, D=D, BLOCK_M=16, BLOCK_N=bn, SOFTCAP=False, SPLITS=1, num_warps=warps)
            try:
                launch(); torch.cuda.synchronize()
            except Exception as e:
                print(f"ctx={ctx} bn={bn} warps={warps}: {type(e).__name__}"); continue
            if ref is None: ref = out.clone()
            err = (out - ref).abs().max().item()
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                for _ in range(200): launch()
            g.replay(); torch.cuda.synchronize()
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record(); [g.replay() for _ in range(5)]; e.record(); torch.cuda.synchronize()
            print(f"ctx={ctx} bn={bn} warps={warps}: {s.elapsed_time(e):.2f} us per launch, max diff {err:.1e}")
