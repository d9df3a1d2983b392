"""Stop 22: kquant_imma_gemv.cu's Q6_K data flow (Q6K=1) for one 16-row tile, step by step in
numpy, as its code reads: the staged activation (groups j and 8 + j as one), the byte
permutes, each field's byte (nibble | top bits at 4-5, from the h plane), the m16n8k16
fragments as PTX lays them out, the epilogue with the int8 scales and the -32 offsets on the summed 16-bit activation; against
mma_gemv.i8_reference. Checked on a CPU before any GPU ran the kernel.

    python reports/gpu-h100-fast-path/scripts/stop22/q6k_imma_emulation.py
"""
import numpy as np
import torch
from gguf import GGMLQuantizationType as T

from impdiff.engine.packed import pack_gguf
from impdiff.kernels.mma_gemv import i8_reference
from impdiff.kernels.quant_matmul import dequantize_reference
from impdiff.testing.shapes import _random_blocks

LIMIT = np.float32(32639.0)


def byte_perm(x, s):
    b = [(x >> (8 * i)) & 0xff for i in range(4)] + [0] * 4
    return sum(b[(s >> (4 * i)) & 7] << (8 * i) for i in range(4))


def i8(v):
    return v - 256 if v >= 128 else v


def stage(x, nt):
    xq = np.zeros((nt, 128), np.uint32)
    xds = np.zeros((nt, 8, 4), np.float32)
    for tt in range(nt):
        raw = x[tt * 256:(tt + 1) * 256]
        for lane in range(32):
            j, u = lane >> 2, lane & 3
            first = 128 * (u >> 1) + 16 * j + 8 * (u & 1)
            v = raw[first:first + 8]
            grp = np.concatenate([raw[16 * j:16 * j + 16], raw[128 + 16 * j:128 + 16 * j + 16]])
            half = raw[128 * (u >> 1) + 16 * j:128 * (u >> 1) + 16 * j + 16]
            amax = np.abs(grp).max()
            live = amax > 1e-30
            inv, dx = (LIMIT / amax, amax / LIMIT) if live else (0, 0)
            ssum = np.float32(dx * sum(int(np.rint(np.float32(v * inv))) for v in half))
            hi, lo = [0, 0], [0, 0]
            for i in range(8):
                qv = int(np.rint(np.float32(v[i] * inv)))
                l8 = ((qv & 0xff) ^ 0x80) - 0x80
                h8 = (qv - l8) >> 8
                lo[i >> 2] |= (l8 & 0xff) << (8 * (i & 3))
                hi[i >> 2] |= (h8 & 0xff) << (8 * (i & 3))
            e, o, h = j >> 1, j & 1, u >> 1
            for c in range(2):
                tl = 2 * (u & 1) + c
                xq[tt, ((e * 2 + 0) * 4 + tl) * 4 + o * 2 + h] = hi[c]
                xq[tt, ((e * 2 + 1) * 4 + tl) * 4 + o * 2 + h] = lo[c]
            if (u & 1) == 0:
                if h == 0:
                    xds[tt, e, o] = dx
                xds[tt, 4 * h + e, 2 + o] = ssum
    return xq, xds


def field(word, high, odd, half):
    lo = ((word >> 4) if odd else word) & 0x0F0F0F0F
    sh = 4 - 4 * half - 2 * odd
    return lo | (((high << sh) if sh >= 0 else (high >> -sh)) & 0x30303030 & 0xFFFFFFFF)


def emulate(w, x):
    nt = w.k // 256
    q = w.q.numpy().view(np.uint32)
    H = w.h.numpy().view(np.uint32)
    S = w.s.numpy()
    sd = w.sd.numpy().view(np.float16).reshape(w.n, -1).astype(np.float32)
    xq, xds = stage(x, nt)
    acc = np.zeros((32, 2))
    for tt in range(nt):
        A = np.zeros((2, 2, 4, 16, 16), np.int64)  # [half][odd][jj][row][k]
        Bm = np.zeros((2, 2, 4, 16, 8), np.int64)
        for lane in range(32):
            g, t = lane >> 2, lane & 3
            xw = [int(v) for v in xq[tt, lane * 4:lane * 4 + 4]]
            sel = [0x4444 ^ ((4 ^ jj) << (4 * (g >> 1))) for jj in range(4)]
            for jj in range(4):
                bl = (byte_perm(xw[0], sel[jj]), byte_perm(xw[1], sel[jj]))
                bh = (byte_perm(xw[2], sel[jj]), byte_perm(xw[3], sel[jj]))
                bq = ((bl[0], bh[0]), (bl[1], bh[1]))
                for half in range(2):
                    for o in range(2):
                        for hrow, row in ((0, g), (1, g + 8)):
                            word = int(q[row, tt * 32 + 16 * half + 4 * t + jj])
                            high = int(H[row, tt * 16 + 4 * t + jj])
                            a = field(word, high, o, half)
                            for i in range(4):
                                A[half, o, jj, row, 4 * t + i] = (a >> 8 * i) & 0xff
                        for i in range(4):
                            Bm[half, o, jj, 4 * t + i, g] = i8((bq[half][o] >> 8 * i) & 0xff)
        C = [[sum(A[half, o, jj] @ Bm[half, o, jj] for jj in range(4)) for o in range(2)]
             for half in range(2)]
        for lane in range(32):
            g, t = lane >> 2, lane & 3
            ds, ds8 = xds[tt, t], xds[tt, 4 + t]
            sums = ((ds[2], ds[3]), (ds8[2], ds8[3]))
            for h in range(2):
                row = g + 8 * h
                part = 0.0
                for half in range(2):
                    for o in range(2):
                        dot = C[half][o][row, 2 * t] * 256 + C[half][o][row, 2 * t + 1]
                        sc = int(S[row, tt * 16 + 8 * half + 2 * t + o])
                        part += sc * (dot * ds[o] - 32.0 * sums[half][o])
                acc[lane, h] += sd[row, 2 * tt] * part
    out = np.zeros(16)
    for lane in range(32):
        g = lane >> 2
        for h in range(2):
            out[g + 8 * h] += acc[lane, h]
    return out


rows, cols = 16, 768
w = pack_gguf(_random_blocks(np.random.default_rng(0), T.Q6_K, rows, cols), T.Q6_K,
              (rows, cols), "cpu")
x = np.random.default_rng(1).standard_normal(cols).astype(np.float32)
x[256 + 16:256 + 32] = 0  # group 1 of super-block 1 zero (its pair, group 9, is not)
x[512 + 32:512 + 48] = 0  # groups 2 and 10 of super-block 2: a zero activation group
x[512 + 128 + 32:512 + 128 + 48] = 0
got = emulate(w, x)
exact = dequantize_reference(w).double().numpy() @ x.astype(np.float64)
ref = i8_reference(torch.from_numpy(x), w).numpy()
print("vs exact", np.abs(got - exact).max() / np.abs(exact).max())
print("vs i8_reference", np.abs(got - ref).max() / np.abs(ref).max())
