"""Stop 15 experiment, not part of the package: a Q4_K GEMV with the 4-bit fields turned into
fp16 pairs by inline PTX (prmt/lop3 into the mantissa of 1024, then one sub or fma per pair)
and fp16 products. Compiled for sm_90 only, counted with sass_packed_fp16.py:

    _qgemvh_kernel 2 rows / 4 lanes / 2 warps: 4.01 SASS instructions per value, 143 registers
    the shipped _qgemv_kernel, same tiles:     4.78 per value, 79 registers

95 of its 513 loop instructions are byte permutes repacking halves into pairs, and the
register count would halve the warps per SM. A first variant (fp16 products summed per group
with tl.sum, the group sums in float32; the asm then gave q - 8) counted 5.17 a value: Triton
lowered the fp16 reductions into scalar half adds and permutes. Not pursued (see the report
README).
"""
import triton
import triton.language as tl


@triton.jit
def _nibbles_f16(words):
    """Eight fp16 tensors: field j of each word as q - 8 (pairs of words per asm call)."""
    return tl.inline_asm_elementwise(
        asm="""{
        .reg .b32 lo, hi, t, c0, c1, c2;
        mov.b32 c0, c0;
        mov.b32 c1, 0x2C002C00;
        mov.b32 c2, 0xD400D400;
        prmt.b32 lo, $8, $9, 0x5410;
        prmt.b32 hi, $8, $9, 0x7632;
        lop3.b32 $0, lo, 0x000F000F, 0x64006400, 0xea;
        lop3.b32 $1, lo, 0x00F000F0, 0x64006400, 0xea;
        shr.u32 t, lo, 8;
        lop3.b32 $2, t, 0x000F000F, 0x64006400, 0xea;
        lop3.b32 $3, t, 0x00F000F0, 0x64006400, 0xea;
        lop3.b32 $4, hi, 0x000F000F, 0x64006400, 0xea;
        lop3.b32 $5, hi, 0x00F000F0, 0x64006400, 0xea;
        shr.u32 t, hi, 8;
        lop3.b32 $6, t, 0x000F000F, 0x64006400, 0xea;
        lop3.b32 $7, t, 0x00F000F0, 0x64006400, 0xea;
        sub.f16x2 $0, $0, c0;
        fma.rn.f16x2 $1, $1, c1, c2;
        sub.f16x2 $2, $2, c0;
        fma.rn.f16x2 $3, $3, c1, c2;
        sub.f16x2 $4, $4, c0;
        fma.rn.f16x2 $5, $5, c1, c2;
        sub.f16x2 $6, $6, c0;
        fma.rn.f16x2 $7, $7, c1, c2;
        }""",
        constraints="=r,=r,=r,=r,=r,=r,=r,=r,r,r",
        args=[words], dtype=(tl.float16,) * 8, is_pure=True, pack=2)


@triton.jit
def _qgemvh_kernel(x_ptr, out_ptr, q_ptr, sm_ptr, N, T, stride_q, stride_sm,
                   G: tl.constexpr, BLOCK_N: tl.constexpr, NT: tl.constexpr, L: tl.constexpr):
    """4-bit fields, weights dequantised to fp16 (q * S + M, S and M fp16 per group in one
    word), products accumulated in fp16 pairs per tile, tiles summed in float32."""
    P: tl.constexpr = 8
    Q: tl.constexpr = G // (4 * L)
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    r = tl.reshape(rows, (1, 1, 1, BLOCK_N, 1))
    lane = tl.arange(0, L)[:, None, None, None, None]
    w = (lane * 4 + tl.arange(0, Q)[None, None, :, None, None] * (4 * L)
         + tl.arange(0, 4)[None, None, None, None, :])
    step = tl.arange(0, NT)[None, :, None, None, None]
    acc = tl.zeros((L, NT, Q, BLOCK_N, 4), tl.float32)
    for t0 in range(0, T, NT):
        t = t0 + step
        words = tl.load(q_ptr + r * stride_q + t * G + w)
        like = words * 0
        like1 = tl.sum(tl.sum(like, axis=4, keep_dims=True), axis=2, keep_dims=True)
        tp, rp = t + like1, r + like1
        fs = _nibbles_f16(words)
        part = tl.zeros((L, NT, Q, BLOCK_N, 4), tl.float16)
        for j in tl.static_range(P):
            x = tl.load(x_ptr + (t * P + j) * G + w).to(tl.float16)
            sm = tl.load(sm_ptr + rp * stride_sm + tp * P + j)
            S = (sm & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True)
            M = (sm >> 16).to(tl.int16).to(tl.float16, bitcast=True)
            part += (fs[j] * S + M) * x
        acc += part.to(tl.float32)
    total = tl.sum(tl.sum(tl.sum(tl.sum(acc, axis=4), axis=2), axis=1), axis=0)
    tl.store(out_ptr + rows, total)
