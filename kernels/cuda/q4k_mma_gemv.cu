// One-token GEMV over Q4_K planes on tensor cores (launcher and layout contract: mma_gemv.py).
//
// Why tensor cores for a GEMV: the CUDA-core GEMV spends ~4.8 instructions a weight value in
// its loop. Here the 4-bit fields go into the mantissa of fp16 1024 with one logic op per two
// values, and one fp16 FMA per two turns (1024 + q) into q * s, exact (q * s <= 15 * 63 <
// 2048); the products and sums then run in the mma, in float32 (the loop: ~2.7 instructions a
// value, sm_90 SASS). The activation enters as three fp16 parts (x = x1 + x2 + x3 after a
// power-of-two scale per super-block, ~33 bits) in rows 0-2 of the mma's A operand, so the
// result keeps float32's precision.
//
// Operands of mma.m16n8k16 (row.col): B = weights, its 8 columns = 8 weight rows, a warp's
// lane (g, c) = (lane / 4, lane % 4) holding row g's k-slots 2c, 2c+1 (b0b1) and 2c+8, 2c+9
// (b2b3); A = the activation parts, lane (g, c) holding part g at the same k-slots in rows g
// and g + 8. The reduction order within an mma is free, so a k-slot is whichever value the
// lane's word yields: lane c of a row reads words 4c..4c+3 and 16+4c..16+4c+3 of each
// super-block (its i-th word), and a word w gives the field pairs (j, j + 4) of groups j, j + 4
// at position w. One A fragment serves two mmas: rows g take pairs (0,4), (1,5) of word i with
// the first, rows g + 8 pairs (2,6), (3,7) with the second; the other rows of each result are
// discarded, as are the rows of lanes g >= 3. The activation parts are staged in shared memory
// once per block in exactly that order.

#include <cuda_fp16.h>
#include <stdint.h>

#include "q4k_gemv.cuh"

#define PARTS 3  // fp16 parts of the activation

__device__ __forceinline__ uint32_t hfma2(uint32_t a, uint32_t b, uint32_t c) {
  uint32_t d;
  asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
}

__device__ __forceinline__ uint32_t hmul2(uint32_t a, uint32_t b) {
  uint32_t d;
  asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
  return d;
}

__device__ __forceinline__ uint32_t hsub2(uint32_t a, uint32_t b) {
  uint32_t d;
  asm("sub.rn.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
  return d;
}

// (a & mask) | bits in one LOP3: a constant `bits` would take a second (one immediate each)
template <uint32_t MASK>
__device__ __forceinline__ uint32_t and_or(uint32_t a, uint32_t bits) {
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(d) : "r"(a), "n"(MASK), "r"(bits));
  return d;
}

__device__ __forceinline__ void mma(float (&acc)[4], const uint4& a, uint32_t b01, uint32_t b23) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};"
      : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
      : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b01), "r"(b23));
}

__device__ __forceinline__ uint32_t f16_pair(float lo, float hi) {
  __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&h);
}

struct Stage {  // one super-block's operands, loaded ahead of their use
  uint4 w0, w1;   // the row's words 4c..4c+3 and 16+4c..16+4c+3
  uint2 s;        // the 8 group scales (u8)
  uint32_t dd;    // fp16 d, -dmin
  uint32_t m;     // the group offsets 2c, 2c+1 (u8 each, low half)
};

// A row's four lanes read 64 contiguous bytes per load (whole 32-byte sectors: a lane reading
// two 16-byte halves of one sector in two loads had every sector fetched twice from L2).
__device__ __forceinline__ Stage load_stage(const uint32_t* q, const uint8_t* s,
                                            const uint8_t* b, const uint32_t* sd, int row,
                                            int stride_q, int stride_s, int stride_b,
                                            int stride_sd, int t, int c, uint64_t pol) {
  const uint4* qt = reinterpret_cast<const uint4*>(q + (size_t)row * stride_q) + t * 8 + c;
  const uint8_t* st_s = s + (size_t)row * stride_s + t * 8;
  Stage st;
  st.w0 = load_stream(qt, pol);
  st.w1 = load_stream(qt + 4, pol);
  st.s = *reinterpret_cast<const uint2*>(st_s);
  st.dd = sd[(size_t)row * stride_sd + t];
  st.m = *reinterpret_cast<const uint16_t*>(b + (size_t)row * stride_b + t * 8 + 2 * c);
  return st;
}

extern "C" __global__ void __launch_bounds__(WARPS * 32)
q4k_mma_gemv(const float* __restrict__ x, float* __restrict__ out, const uint32_t* __restrict__ q,
             const uint8_t* __restrict__ s, const uint8_t* __restrict__ b,
             const uint32_t* __restrict__ sd, int n, int tiles, int tiles_per_split,
             int stride_q, int stride_s, int stride_b, int stride_sd, float alpha,
             uint32_t f16_1024) {  // 0x64006400, an argument so that it stays in a register
  extern __shared__ uint4 smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int t_lo = blockIdx.y * tiles_per_split;
  const int nt = min(tiles, t_lo + tiles_per_split) - t_lo;
  uint4* xa = smem;                                     // [nt][8 words][4 c][PARTS]
  float* xs = reinterpret_cast<float*>(xa + nt * 8 * 4 * PARTS);  // [nt][8] group sums
  float* inv = xs + nt * 8;                             // [nt] 1 / the parts' scale

  uint64_t pol;
  asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(pol));
  const int g = lane >> 2, c = lane & 3;
  // lanes g >= PARTS compute rows nobody reads: they load a part anyway (no predicate, no
  // zeroing) and their sums are dropped before the rows are added
  const int part = g % PARTS;
  constexpr int STEP = ACT ? 4 : 8;  // output rows a row block (gated: gate rows g < 4, up g >= 4)
  const int rows_out = ACT ? n / 2 : n;
  const Tasks w = tasks_of(warp, nt, rows_out, STEP * ROW_BLOCKS);
  int task = w.first, first0;
  int row[ROW_BLOCKS];
  Stage ring[ROW_BLOCKS];  // each row block's next super-block, loading during this one
  float tot0[ROW_BLOCKS], tot1[ROW_BLOCKS], mins[ROW_BLOCKS];
  auto start = [&](int next_task) {  // a task's rows and its first super-block's loads
    first0 = next_task * ROW_BLOCKS * STEP;
#pragma unroll
    for (int r = 0; r < ROW_BLOCKS; r++) {
      const int first = min(first0 + r * STEP, rows_out - STEP);
#if ACT
      row[r] = g < 4 ? first + g : n / 2 + first + g - 4;
#else
      row[r] = first + g;
#endif
      // (a warp with no super-blocks, k_lo = nt, loads one it never uses, inside the row)
      ring[r] = load_stage(q, s, b, sd, row[r], stride_q, stride_s, stride_b, stride_sd,
                           min(t_lo + w.k_lo, tiles - 1), c, pol);
      tot0[r] = tot1[r] = mins[r] = 0.0f;
    }
  };
  if (task < w.count) start(task);  // loading while the activation is staged
#if PDL
  // the weights above are constant; x is the previous kernel's output
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
  // stage the activation: a warp per super-block, lane = word position (see Stage)
  for (int tt = warp; tt < nt; tt += WARPS) {
    const float* xt = x + (size_t)(t_lo + tt) * 256;
    float v[8], amax = 0.0f;
#pragma unroll
    for (int j = 0; j < 8; j++) {
      v[j] = xt[32 * j + lane];
      amax = fmaxf(amax, fabsf(v[j]));
    }
#pragma unroll
    for (int j = 0; j < 8; j++) {
      float sum = v[j];
#pragma unroll
      for (int o = 16; o; o >>= 1) sum += __shfl_xor_sync(FULL, sum, o);
      if (lane == 0) xs[tt * 8 + j] = sum;
    }
#pragma unroll
    for (int o = 16; o; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(FULL, amax, o));
    // a power of two brings the largest value just under 2^15: no fp16 part overflows
    int e;
    frexpf(amax, &e);
    e = amax > 0.0f ? max(min(e, 100), -100) : 0;
    const float scale = ldexpf(1.0f, 15 - e);
    if (lane == 0) inv[tt] = ldexpf(1.0f, e - 15);
    uint32_t piece[PARTS][4];
    float rest[8];
#pragma unroll
    for (int j = 0; j < 8; j++) rest[j] = v[j] * scale;
#pragma unroll
    for (int m = 0; m < PARTS; m++) {
#pragma unroll
      for (int p = 0; p < 4; p++) {
        piece[m][p] = f16_pair(rest[p], rest[p + 4]);
        __half2 h = *reinterpret_cast<__half2*>(&piece[m][p]);
        rest[p] -= __low2float(h);  // exact: the part is the leading bits of rest
        rest[p + 4] -= __high2float(h);
      }
    }
    const int wc = (lane >> 2) & 3, i = (lane & 3) | (lane >> 4 << 2);  // lane = word (Stage)
#pragma unroll
    for (int m = 0; m < PARTS; m++)
      xa[((tt * 8 + i) * 4 + wc) * PARTS + m] =
          make_uint4(piece[m][0], piece[m][2], piece[m][1], piece[m][3]);
  }
  __syncthreads();
#if PDL
  // every block is resident (one wave), so a successor's early blocks take none of its SMs
  asm volatile("griddepcontrol.launch_dependents;");
#endif

  for (; task < w.count; task += w.stride) {
  for (int tt = w.k_lo; tt < w.k_hi; tt++) {
    uint4 a[8];
    const uint4* xt = xa + (tt * 8 * 4 + c) * PARTS + part;
#pragma unroll
    for (int i = 0; i < 8; i++) a[i] = xt[i * 4 * PARTS];
    const float iv = inv[tt];
    const float2 sums = reinterpret_cast<const float2*>(xs)[tt * 4 + c];
#pragma unroll
    for (int r = 0; r < ROW_BLOCKS; r++) {
      const Stage cur = ring[r];
      if (tt + 1 < w.k_hi)
        ring[r] = load_stage(q, s, b, sd, row[r], stride_q, stride_s, stride_b, stride_sd,
                             t_lo + tt + 1, c, pol);
      // (s_p, s_p+4) as fp16 pairs; odd fields sit 4 bits up, so their scale is s / 16
      uint32_t S[4], O[4];
#pragma unroll
      for (int p = 0; p < 4; p++) {
        const uint32_t pick = __byte_perm(cur.s.x, cur.s.y, p | (p << 4) | ((4 + p) << 8));
        S[p] = hsub2(and_or<0x00ff00ffu>(pick, f16_1024), f16_1024);
        if (p & 1) S[p] = hmul2(S[p], 0x2C002C00u);   // 1/16
        O[p] = hmul2(S[p], 0xE400E400u);              // -1024 s
      }
      const uint32_t words[8] = {cur.w0.x, cur.w0.y, cur.w0.z, cur.w0.w,
                                 cur.w1.x, cur.w1.y, cur.w1.z, cur.w1.w};
      float lo[4] = {0.0f, 0.0f, 0.0f, 0.0f}, hi[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
      for (int i = 0; i < 8; i++) {
        const uint32_t w = words[i], w8 = w >> 8;
        const uint32_t b0 = hfma2(and_or<0x000f000fu>(w, f16_1024), S[0], O[0]);
        const uint32_t b1 = hfma2(and_or<0x00f000f0u>(w, f16_1024), S[1], O[1]);
        const uint32_t b2 = hfma2(and_or<0x000f000fu>(w8, f16_1024), S[2], O[2]);
        const uint32_t b3 = hfma2(and_or<0x00f000f0u>(w8, f16_1024), S[3], O[3]);
        mma(lo, a[i], b0, b1);  // rows g: pairs (0,4), (1,5); rows g + 8 discarded
        mma(hi, a[i], b2, b3);  // rows g + 8: pairs (2,6), (3,7); rows g discarded
      }
      // this super-block's d for the rows of the accumulator (2c, 2c+1), and the offsets
      const float2 dm = __half22float2(*reinterpret_cast<const __half2*>(&cur.dd));
      const float d0 = __shfl_sync(FULL, dm.x, (2 * c) << 2);
      const float d1 = __shfl_sync(FULL, dm.x, (2 * c + 1) << 2);
      tot0[r] = fmaf(lo[0] + hi[2], d0 * iv, tot0[r]);
      tot1[r] = fmaf(lo[1] + hi[3], d1 * iv, tot1[r]);
      mins[r] = fmaf(dm.y, (float)(cur.m & 0xff) * sums.x + (float)(cur.m >> 8) * sums.y,
                     mins[r]);
    }
  }
  float val[ROW_BLOCKS][1];  // lane (g, c): weight row g of each row block
#pragma unroll
  for (int r = 0; r < ROW_BLOCKS; r++) {
    // parts (g) into one sum per accumulator row, offsets (c) into one per weight row
    float t0 = g < PARTS ? tot0[r] : 0.0f, t1 = g < PARTS ? tot1[r] : 0.0f, m = mins[r];
#pragma unroll
    for (int o = 4; o < 32; o <<= 1) {
      t0 += __shfl_xor_sync(FULL, t0, o);
      t1 += __shfl_xor_sync(FULL, t1, o);
    }
    m += __shfl_xor_sync(FULL, m, 1);
    m += __shfl_xor_sync(FULL, m, 2);
    const float even = __shfl_sync(FULL, t0, g >> 1), odd = __shfl_sync(FULL, t1, g >> 1);
    val[r][0] = ((g & 1) ? odd : even) + m;
  }
  add_k_parts(inv + nt, val, w, g, c == 0);
#pragma unroll
  for (int r = 0; r < ROW_BLOCKS; r++) {
    const bool stores = first0 + r * STEP < rows_out && c == 0 && w.kpart == 0;
#if ACT
    const float up = __shfl_sync(FULL, val[r][0], lane + 16);
    if (stores && g < 4) out[row[r]] = activate(val[r][0] * alpha) * (up * alpha);
#else
    if (stores) out[(size_t)blockIdx.y * n + row[r]] = val[r][0] * alpha;
#endif
  }
  if (task + w.stride < w.count) start(task + w.stride);
  }
}
