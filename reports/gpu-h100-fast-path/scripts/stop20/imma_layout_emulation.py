"""Stop 20: q4k_imma_gemv.cu's data flow for one 16-row tile, step by step in numpy (its staged
activation words, the byte permutes, the mma fragments as PTX lays them out, the epilogue),
against the planes' reference: the layout checked on a CPU before any GPU ran the kernel.
The kernel's own product in torch is mma_gemv.i8_reference; this prints 4.6e-08 against it.

    python reports/gpu-h100-fast-path/scripts/stop20/imma_layout_emulation.py
"""
import numpy as np, torch
from impdiff.engine.packed import pack_gguf
from impdiff.kernels.quant_matmul import dequantize_reference
from impdiff.testing.shapes import _random_blocks
from gguf import GGMLQuantizationType as T

def byte_perm(x, y, s):
    b = [(x >> (8*i)) & 0xff for i in range(4)] + [(y >> (8*i)) & 0xff for i in range(4)]
    return sum(b[(s >> (4*i)) & 7] << (8*i) for i in range(4))

def i8(v): return v - 256 if v >= 128 else v

def emulate(w, x, rows):
    nt = w.tiles
    q = w.q.numpy().view(np.uint32); S = w.s.numpy(); B = w.b.numpy()
    sd = w.sd.numpy().view(np.float16).reshape(w.n, -1).astype(np.float32)
    # staging
    xq = np.zeros((nt, 128), np.uint32); xds = np.zeros((nt, 4, 4), np.float32)
    LIMIT = np.float32(32639.0)
    for tt in range(nt):
        for lane in range(32):
            j, u = lane >> 2, lane & 3
            v = x[tt*256 + 32*j + 8*u: tt*256 + 32*j + 8*u + 8]
            grp = x[tt*256 + 32*j: tt*256 + 32*j + 32]
            amax = np.abs(grp).max(); ssum = grp.sum(dtype=np.float32)
            live = amax > 1e-30
            inv = LIMIT / amax if live else 0; dx = amax / LIMIT if live else 0
            hi = [0, 0]; lo = [0, 0]
            for i in range(8):
                qv = int(np.rint(np.float32(v[i] * inv)))
                l8 = ((qv & 0xff) ^ 0x80) - 0x80; h8 = (qv - l8) >> 8
                assert -128 <= h8 <= 127
                lo[i >> 2] |= (l8 & 0xff) << (8*(i & 3)); hi[i >> 2] |= (h8 & 0xff) << (8*(i & 3))
            e, o, h = j >> 1, j & 1, u >> 1
            for c in range(2):
                tl = 2*(u & 1) + c
                xq[tt, ((e*2+0)*4+tl)*4 + o*2 + h] = hi[c]
                xq[tt, ((e*2+1)*4+tl)*4 + o*2 + h] = lo[c]
            if u == 0:
                xds[tt, e, o] = dx * 0.0625 if o else dx
                xds[tt, e, 2+o] = ssum
    out = np.zeros(16)
    acc = np.zeros((32, 2))
    for tt in range(nt):
        A = np.zeros((2, 4, 16, 32), np.int64)  # [low/high][jj][row][k]
        Bm = np.zeros((2, 4, 32, 8), np.int64)
        for lane in range(32):
            g, t = lane >> 2, lane & 3
            xw = xq[tt, lane*4: lane*4+4]
            sel = [0x4444 ^ ((4 ^ jj) << (4*(g >> 1))) for jj in range(4)]
            r0, r1 = rows[g], rows[g+8]
            def word(r, idx): return int(q[r, tt*32 + idx])
            for jj in range(4):
                a0, a1 = word(r0, 4*t + jj), word(r1, 4*t + jj)
                a2, a3 = word(r0, 16 + 4*t + jj), word(r1, 16 + 4*t + jj)
                for hl, mask, bw in ((0, 0x0F0F0F0F, (xw[0], xw[1])), (1, 0xF0F0F0F0, (xw[2], xw[3]))):
                    regs = [a0 & mask, a1 & mask, a2 & mask, a3 & mask]
                    for i in range(4):
                        A[hl, jj, g, 4*t+i] = (regs[0] >> 8*i) & 0xff
                        A[hl, jj, g+8, 4*t+i] = (regs[1] >> 8*i) & 0xff
                        A[hl, jj, g, 16+4*t+i] = (regs[2] >> 8*i) & 0xff
                        A[hl, jj, g+8, 16+4*t+i] = (regs[3] >> 8*i) & 0xff
                    b0 = byte_perm(int(bw[0]), 0, sel[jj]); b1 = byte_perm(int(bw[1]), 0, sel[jj])
                    for i in range(4):
                        Bm[hl, jj, 4*t+i, g] = i8((b0 >> 8*i) & 0xff)
                        Bm[hl, jj, 16+4*t+i, g] = i8((b1 >> 8*i) & 0xff)
        C = [sum(A[hl, jj] @ Bm[hl, jj] for jj in range(4)) for hl in range(2)]
        for lane in range(32):
            g, t = lane >> 2, lane & 3
            ds = xds[tt, t]
            for h in range(2):
                r = rows[g + 8*h]
                row = g + 8*h
                cl = C[0][row, 2*t]*256 + C[0][row, 2*t+1]
                ch = C[1][row, 2*t]*256 + C[1][row, 2*t+1]
                sc_e, sc_o = S[r, tt*8 + 2*t], S[r, tt*8 + 2*t + 1]
                m_e, m_o = B[r, tt*8 + 2*t], B[r, tt*8 + 2*t + 1]
                part = cl * (sc_e * ds[0]) + ch * (sc_o * ds[1])
                offs = m_e * ds[2] + m_o * ds[3]
                d, ndmin = sd[r, 2*tt], sd[r, 2*tt+1]
                acc[lane, h] += d * part + ndmin * offs
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        for h in range(2): out[g + 8*h] += acc[lane, h]
    return out

rows, cols = 16, 768
blocks = _random_blocks(np.random.default_rng(0), T.Q4_K, rows, cols)
w = pack_gguf(blocks, T.Q4_K, (rows, cols), "cpu")
print(w.q.shape, w.q.dtype, w.s.shape, w.b.shape, w.sd.shape, w.sd.dtype)
x = np.random.default_rng(1).standard_normal(cols).astype(np.float32)
x[256:288] = 0
exp = dequantize_reference(w).double().numpy() @ x.astype(np.float64)
got = emulate(w, x, list(range(16)))
print(np.abs(got - exp).max() / np.abs(exp).max())
def quantised(x):
    xg = x.reshape(-1, 32).astype(np.float32)
    amax = np.abs(xg).max(1, keepdims=True)
    inv = np.where(amax > 1e-30, np.float32(32639.0) / np.maximum(amax, 1e-30), 0).astype(np.float32)
    dx = np.where(amax > 1e-30, amax / np.float32(32639.0), 0).astype(np.float32)
    return (np.rint(xg * inv) * dx).reshape(-1)
exq = dequantize_reference(w).double().numpy() @ quantised(x).astype(np.float64)
print("vs quantised x", np.abs(got - exq).max() / np.abs(exq).max())

from dataclasses import replace
wq = replace(w, b=torch.zeros_like(w.b))
Wsc = dequantize_reference(wq).double().numpy(); Woff = dequantize_reference(w).double().numpy() - Wsc
mixed = Wsc @ quantised(x).astype(np.float64) + Woff @ x.astype(np.float64)
print("vs mixed", np.abs(got - mixed).max() / np.abs(mixed).max())
