// One-token GEMV over Q4_K or (Q6K=1) Q6_K planes on integer tensor cores (launcher and layout
// contract: mma_gemv.py, operands "i8").
//
// Why integers: the fp16 tensor-core GEMV (q4k_mma_gemv.cu) spends ~2.7 instructions a weight
// value turning fields into fp16 products q * s, and its loads alone ran at 2.96 TB/s where the
// whole ran at 2.20 (stop 19): the arithmetic holds it. Here a field enters the mma as the byte
// it already is: one logic op masks four fields of a word (the even groups' nibbles, or the odd
// groups' at 16 times their value, folded into their scale), and `mma.m16n8k32` (u8 weights x
// s8 activation, s32 sums) takes 512 weight values an instruction. Each group's scale, offset
// and the super-block's d then apply once per 32 values and row, in float32.
//
// The activation: per group of 32 values, x = dx * (256 hi + lo) with hi, lo signed bytes (16
// bits; |x| / dx <= 32639 so that hi stays a byte), and the float32 sum of the group's x for
// the offsets. Relative error of a product ~1e-5 of its largest terms, where the fp16 kernel
// keeps float32's ~1e-7 (mma_gemv.choose: where the tuning table names it, and with no table
// the gated gate/up product).
//
// Operands of mma.m16n8k32 (row.col): A = weights, 16 rows a warp (rows g and g + 8 of lane
// (g, t) = (lane / 4, lane % 4)), lane t holding k-slots 4t..4t+3 (a0, a1) and 16+4t..16+4t+3
// (a2, a3). A plane word holds one position of the 8 groups of a super-block (field j = group
// j), so a word masked with 0x0F0F0F0F gives groups 0, 2, 4, 6 at that position in bytes 0-3:
// k-slot 4t + e is group 2e (the "low" mmas; 2e + 1 in the "high" ones, masked 0xF0F0F0F0).
// Lane t reads words 4t..4t+3 and 16+4t..16+4t+3 of each super-block: mma j takes word 4t + j
// as a0 and 16 + 4t + j as a2. B = the activation, its 8 columns n = 2e + p: group pair e, part
// p (0: hi, 1: lo), nonzero only in the k-slots of its group (byte e of each word). So an
// accumulator's cells (row, 2t) and (row, 2t + 1) are the hi and lo sums of group 2t (low
// mmas) or 2t + 1 (high mmas): every lane ends with its own groups' sums, none discarded.
// The activation is staged in shared memory once per block so that lane (g, t) reads its four
// words of a super-block in one 16-byte load: word (o, h) holds positions 16h + 4t .. + 3 of
// group 2(g / 2) + o, part g % 2; four byte permutes place one byte of it at byte g / 2 of a
// B register. x reaches shared memory first as it is, in one cp.async copy: the staging then
// waits on L2 once, where loading there took a round trip per super-block a warp stages (2 to
// 7 in turn; 8B decode 383.4 -> 384.8 t/s, stop 21).
//
// Q6_K (Q6K=1): its planes are those of Q4_K but for 16-value groups (a super-block's words
// 0-15 hold groups 0-7 at positions 0-15, words 16-31 groups 8-15) and a plane h of the top 2
// bits of each field: h word p holds those of words p and 16 + p, four fields a byte
// (quant_matmul's docstring). A field's byte is its nibble (the odd groups' shifted down: 63 *
// 16 leaves no byte) or-ed with its top bits at bits 4-5. The k-slot halves of a word pair
// belong to different groups (2e and 8 + 2e) with different scales, so each half is its own
// m16n8k16 mma, with the same B registers as Q4_K's halves: the activation is staged as for
// Q4_K with each "group of 32" made of groups j and 8 + j (positions 0-15 and 16-31), one dx
// for both, and a sum for each.

#include <cuda_fp16.h>
#include <stdint.h>

#include "q4k_gemv.cuh"

#define LIMIT 32639.0f  // largest |x| / dx: 256 hi + lo with hi <= 127 after lo's rounding

#ifndef Q6K
#define Q6K 0
#endif
// ROPE: the rows are those of a fused [Q; K; V] projection for one token (from row rope_row0
// on): Q's and K's rotated (pairs 2i, 2i + 1: llama's GGUF order) and stored as rope_qkv
// (norm_rope.py) stores them, Q to q_out, K and V into the fp16 caches' row at the position.
// A pair is rows g and g + 1 of a row block: lanes 4 apart, one shuffle.
#ifndef ROPE
#define ROPE 0
#endif
static_assert(!(ROPE && ACT), "RoPE follows a plain product");

__device__ __forceinline__ void imma(int (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                     uint32_t a3, uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void imma16(int (&c)[4], uint32_t a0, uint32_t a1, uint32_t b0) {
  asm("mma.sync.aligned.m16n8k16.row.col.s32.u8.s8.s32 {%0,%1,%2,%3}, {%4,%5}, {%6}, "
      "{%0,%1,%2,%3};"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a0), "r"(a1), "r"(b0));
}

// n4 16-byte pieces from global to shared memory, all in flight at once
__device__ __forceinline__ void copy_async(float* dst, const float* src, int n4) {
  for (int i = threadIdx.x; i < n4; i += WARPS * 32) {
    const unsigned d = (unsigned)__cvta_generic_to_shared(dst + 4 * i);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(d), "l"(src + 4 * i) : "memory");
  }
  asm volatile("cp.async.commit_group;" ::: "memory");
}

struct Rows {  // one super-block of a lane's two rows (g, g + 8), loaded ahead of its use
  uint4 w0[2], w1[2];  // words 4t..4t+3 and 16+4t..16+4t+3
#if Q6K
  uint4 hw[2];         // h words 4t..4t+3
  uint32_t s[2];       // the int8 scales of groups 2t, 2t+1, 8+2t, 9+2t of each row
#else
  uint32_t s, m;       // the scales and offsets of groups 2t, 2t+1: row g low half, g + 8 high
#endif
  uint32_t dd[2];      // fp16 d, -dmin (Q6_K: d, d)
};

struct Base {  // a lane's two rows (g, g + 8) at super-block 0 of each plane
  const uint4* q[2];
  const uint16_t *s[2];  // groups 2t, 2t + 1
#if Q6K
  const uint4* h[2];
#else
  const uint16_t* b[2];
#endif
  const uint32_t* sd[2];
};

// b: the offsets (Q4_K) or h (Q6_K)
__device__ __forceinline__ Base row_base(const uint32_t* q, const uint8_t* s, const void* b,
                                         const uint32_t* sd, const int (&row)[2], int stride_q,
                                         int stride_s, int stride_b, int stride_sd, int t) {
  Base a;
#pragma unroll
  for (int h = 0; h < 2; h++) {
    a.q[h] = reinterpret_cast<const uint4*>(q + (size_t)row[h] * stride_q) + t;
    a.s[h] = reinterpret_cast<const uint16_t*>(s + (size_t)row[h] * stride_s) + t;
#if Q6K
    a.h[h] = reinterpret_cast<const uint4*>(static_cast<const uint32_t*>(b) +
                                            (size_t)row[h] * stride_b) + t;
#else
    a.b[h] = reinterpret_cast<const uint16_t*>(static_cast<const uint8_t*>(b) +
                                               (size_t)row[h] * stride_b) + t;
#endif
    a.sd[h] = sd + (size_t)row[h] * stride_sd;
  }
  return a;
}

// A row's four lanes read 64 contiguous bytes per load (whole 32-byte sectors). `tt` is the
// same for the whole warp, so its offsets are computed once, not per lane.
__device__ __forceinline__ Rows load_rows(const Base& a, int tt, uint64_t pol) {
  Rows r;
#pragma unroll
  for (int h = 0; h < 2; h++) {
    r.w0[h] = load_stream(a.q[h] + tt * 8, pol);
    r.w1[h] = load_stream(a.q[h] + tt * 8 + 4, pol);
    r.dd[h] = a.sd[h][tt];
#if Q6K
    r.hw[h] = load_stream(a.h[h] + tt * 4, pol);
    r.s[h] = a.s[h][tt * 8] | (uint32_t)a.s[h][tt * 8 + 4] << 16;
#endif
  }
#if !Q6K
  r.s = a.s[0][tt * 4] | (uint32_t)a.s[1][tt * 4] << 16;
  r.m = a.b[0][tt * 4] | (uint32_t)a.b[1][tt * 4] << 16;
#endif
  return r;
}

// MIN_BLOCKS (the launcher's, for the ROPE variant): registers capped so that an SM holds as
// many blocks as of the plain kernel, where the epilogue took more (named only then: ptxas
// allocates differently even for a cap it would meet anyway)
#ifdef MIN_BLOCKS
#define BOUNDS __launch_bounds__(WARPS * 32, MIN_BLOCKS)
#else
#define BOUNDS __launch_bounds__(WARPS * 32)
#endif

extern "C" __global__ void BOUNDS
kquant_imma_gemv(const float* __restrict__ x, float* __restrict__ out,
                 const uint32_t* __restrict__ q, const uint8_t* __restrict__ s,
                 const void* __restrict__ b, const uint32_t* __restrict__ sd, int n, int tiles,
                 int tiles_per_split, int stride_q, int stride_s, int stride_b, int stride_sd,
                 float alpha, const int* __restrict__ positions, const float* __restrict__ rope_cos,
                 const float* __restrict__ rope_sin, float* __restrict__ q_out,
                 __half* __restrict__ k_cache, __half* __restrict__ v_cache, int rope_row0,
                 int q_rows, int k_rows, int head_dim, int n_rot, int cache_stride) {
  extern __shared__ uint4 smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int t_lo = blockIdx.y * tiles_per_split;
  const int nt = min(tiles, t_lo + tiles_per_split) - t_lo;
  // a super-block's group parameters: Q4_K [4 pairs] dx (odd / 16), sums; Q6_K also [4 pairs]
  // the sums of groups 8 + j
  constexpr int PARAMS = Q6K ? 8 : 4;
  uint4* xq = smem;                                       // [nt][32 lanes] the B words
  float4* xds = reinterpret_cast<float4*>(xq + nt * 32);  // [nt][PARAMS]
  float* raw = reinterpret_cast<float*>(xds + nt * PARAMS);  // [nt][256] x as it is
  float* red = raw + nt * 256;                            // add_k_parts' sums

  uint64_t pol;
  asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(pol));
  const int g = lane >> 2, t = lane & 3;
  constexpr int STEP = ACT ? 8 : 16;  // output rows a row block (gated: gate rows g, up g + 8)
  const int rows_out = ACT ? n / 2 : n;
  const Tasks w = tasks_of(warp, nt, rows_out, STEP * ROW_BLOCKS);
  int task = w.first, first0;
  int row[ROW_BLOCKS][2];
  Base base[ROW_BLOCKS];
  Rows ring[ROW_BLOCKS];  // each row block's next super-block, loading during this one
  float acc[ROW_BLOCKS][2];
  auto start = [&](int next_task) {  // a task's rows and its first super-block's loads
    first0 = next_task * ROW_BLOCKS * STEP;
#pragma unroll
    for (int r = 0; r < ROW_BLOCKS; r++) {
      // a row block past the end recomputes the last one (and stores nothing); a partial last
      // one overlaps the block before it and stores those rows again, the same values
      const int first = min(first0 + r * STEP, rows_out - STEP);
      row[r][0] = first + g;
      row[r][1] = (ACT ? n / 2 : 8) + first + g;  // gated: the up row of gate row g
      base[r] = row_base(q, s, b, sd, row[r], stride_q, stride_s, stride_b, stride_sd, t);
      // (a warp with no super-blocks, k_lo = nt, loads one it never uses, inside the row)
      ring[r] = load_rows(base[r], min(t_lo + w.k_lo, tiles - 1), pol);
      acc[r][0] = acc[r][1] = 0.0f;
    }
  };
#if ROPE
  // each row's cos and sin (1, 0 for V and past n_rot), loaded while the task runs: no round
  // trip to L2 between its product and its stores
  float turn[ROW_BLOCKS][2][2];
  int pos = 0;
  auto prefetch_turns = [&] {
#pragma unroll
    for (int r = 0; r < ROW_BLOCKS; r++)
#pragma unroll
      for (int h = 0; h < 2; h++) {
        const int d = (rope_row0 + row[r][h]) % head_dim, i = pos * (n_rot / 2) + d / 2;
        const bool turns = d < n_rot && rope_row0 + row[r][h] < q_rows + k_rows;
        turn[r][h][0] = turns ? rope_cos[i] : 1.0f;
        turn[r][h][1] = turns ? rope_sin[i] : 0.0f;
      }
  };
#endif
  if (task < w.count) start(task);  // loading while the activation is staged
#if PDL
  // the weights above are constant; x is the previous kernel's output
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
  copy_async(raw, x + (size_t)t_lo * 256, nt * 64);
#if ROPE
  pos = __ldcg(positions);  // (the step's position: a buffer the graph fills)
  if (task < w.count) prefetch_turns();
#endif
  asm volatile("cp.async.wait_all;" ::: "memory");
  __syncthreads();
  // stage the activation: a warp per super-block, four lanes per group (lane: group j = lane
  // / 4, positions 8u..8u+7, u = lane % 4; Q6_K: groups j and 8 + j as one)
  for (int tt = warp; tt < nt; tt += WARPS) {
    const int j = lane >> 2, u = lane & 3;
    const int first = Q6K ? 128 * (u >> 1) + 16 * j + 8 * (u & 1) : 32 * j + 8 * u;
    const float4* xt = reinterpret_cast<const float4*>(raw + tt * 256 + first);
    const float4 v0 = xt[0], v1 = xt[1];
    const float v[8] = {v0.x, v0.y, v0.z, v0.w, v1.x, v1.y, v1.z, v1.w};
    float amax = 0.0f, sum = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; i++) {
      amax = fmaxf(amax, fabsf(v[i]));
      sum += v[i];
    }
#pragma unroll
    for (int o = 1; o < 4; o <<= 1) {
      amax = fmaxf(amax, __shfl_xor_sync(FULL, amax, o));
      if (!Q6K) sum += __shfl_xor_sync(FULL, sum, o);
    }
    // a group of (near) zeros stays zero rather than scaling by an infinite 1 / dx
    const bool live = amax > 1e-30f;
    const float inv = live ? LIMIT / amax : 0.0f, dx = live ? amax / LIMIT : 0.0f;
    uint32_t hi[2] = {0, 0}, lo[2] = {0, 0};
    int qsum = 0;
#pragma unroll
    for (int i = 0; i < 8; i++) {
      const int qv = __float2int_rn(v[i] * inv);
      const int l8 = (qv << 24) >> 24, h8 = (qv - l8) >> 8;
      lo[i >> 2] |= (uint32_t)(l8 & 0xff) << (8 * (i & 3));
      hi[i >> 2] |= (uint32_t)(h8 & 0xff) << (8 * (i & 3));
      qsum += qv;
    }
#if Q6K
    // Q6_K's offset (-32 d s, per group of 16: the lane pairs u = 0, 1 and 2, 3) multiplies the
    // sum of the activation as the fields see it: (q - 32) x~ where q x~ - 32 x would leave the
    // ~5x larger q x~ and 32 x to cancel with x~'s rounding in one of them (random weights:
    // 1.0e-4 of the largest output against 4.6e-5, scripts/stop22/q6k_imma_emulation.py)
    qsum += __shfl_xor_sync(FULL, qsum, 1);
    sum = dx * (float)qsum;
#endif
    // positions 8u + 4c .. + 3 are those of lane t = 2 (u % 2) + c, half h = u / 2
    const int e = j >> 1, o = j & 1, h = u >> 1;
    uint32_t* words = reinterpret_cast<uint32_t*>(xq + tt * 32);
#pragma unroll
    for (int c = 0; c < 2; c++) {
      const int tl = 2 * (u & 1) + c;
      words[((e * 2 + 0) * 4 + tl) * 4 + o * 2 + h] = hi[c];
      words[((e * 2 + 1) * 4 + tl) * 4 + o * 2 + h] = lo[c];
    }
#if Q6K
    if ((u & 1) == 0) {
      float* pair = reinterpret_cast<float*>(xds + tt * PARAMS + 4 * h + e);
      if (h == 0) pair[o] = dx;
      pair[2 + o] = sum;
    }
#else
    if (u == 0) {
      float* pair = reinterpret_cast<float*>(xds + tt * PARAMS + e);
      pair[o] = o ? dx * 0.0625f : dx;  // the odd groups' fields are read 16 times too large
      pair[2 + o] = sum;
    }
#endif
  }
  __syncthreads();
#if PDL
  // every block is resident (one wave), so a successor's early blocks take none of its SMs
  asm volatile("griddepcontrol.launch_dependents;");
#endif

  // byte j of a staged word to byte g / 2 of a B register, zeros elsewhere
  uint32_t sel[4];
#pragma unroll
  for (int jj = 0; jj < 4; jj++) sel[jj] = 0x4444u ^ ((4u ^ jj) << (4 * (g >> 1)));

  for (; task < w.count; task += w.stride) {
  // two super-blocks a trip, so that the ring's loads land in registers without copies
#pragma unroll 2
  for (int tt = w.k_lo; tt < w.k_hi; tt++) {
    const uint4 xw = xq[tt * 32 + lane];
    const float4 ds = xds[tt * PARAMS + t];
#if Q6K
    const float2 ds8 = *reinterpret_cast<const float2*>(
        reinterpret_cast<const float*>(xds + tt * PARAMS + 4 + t) + 2);  // sums of 8 + 2t, 9 + 2t
#endif
    uint32_t bl[4][2], bh[4][2];  // B of the low and high mmas
#pragma unroll
    for (int jj = 0; jj < 4; jj++) {
      bl[jj][0] = __byte_perm(xw.x, 0, sel[jj]);
      bl[jj][1] = __byte_perm(xw.y, 0, sel[jj]);
      bh[jj][0] = __byte_perm(xw.z, 0, sel[jj]);
      bh[jj][1] = __byte_perm(xw.w, 0, sel[jj]);
    }
#pragma unroll
    for (int r = 0; r < ROW_BLOCKS; r++) {
      const Rows cur = ring[r];
      // the last super-block of a task loads itself again: no branch around the loads
      ring[r] = load_rows(base[r], t_lo + min(tt + 1, w.k_hi - 1), pol);
      const uint32_t a0[4] = {cur.w0[0].x, cur.w0[0].y, cur.w0[0].z, cur.w0[0].w};
      const uint32_t a1[4] = {cur.w0[1].x, cur.w0[1].y, cur.w0[1].z, cur.w0[1].w};
      const uint32_t a2[4] = {cur.w1[0].x, cur.w1[0].y, cur.w1[0].z, cur.w1[0].w};
      const uint32_t a3[4] = {cur.w1[1].x, cur.w1[1].y, cur.w1[1].z, cur.w1[1].w};
#if Q6K
      const uint32_t hw0[4] = {cur.hw[0].x, cur.hw[0].y, cur.hw[0].z, cur.hw[0].w};
      const uint32_t hw1[4] = {cur.hw[1].x, cur.hw[1].y, cur.hw[1].z, cur.hw[1].w};
      int c[2][2][4] = {};  // [words 0-15 or 16-31][even or odd groups]
#pragma unroll
      for (int jj = 0; jj < 4; jj++) {
        // row g's and g + 8's fields of one parity and half: nibble | top bits at 4-5
        auto field = [](uint32_t word, uint32_t high, int odd, int half) {
          const uint32_t lo = (odd ? word >> 4 : word) & 0x0F0F0F0Fu;
          const int sh = 4 - 4 * half - 2 * odd;  // the top bits' place in h: 4 half + 2 odd
          return lo | ((sh >= 0 ? high << sh : high >> -sh) & 0x30303030u);
        };
        const uint32_t bq[2][2] = {{bl[jj][0], bh[jj][0]}, {bl[jj][1], bh[jj][1]}};
#pragma unroll
        for (int o = 0; o < 2; o++) {
          imma16(c[0][o], field(a0[jj], hw0[jj], o, 0), field(a1[jj], hw1[jj], o, 0), bq[0][o]);
          imma16(c[1][o], field(a2[jj], hw0[jj], o, 1), field(a3[jj], hw1[jj], o, 1), bq[1][o]);
        }
      }
      // cells (row, hi) and (row, lo) of group 8 half + 2t + odd, rows g then g + 8
      const float sums[2][2] = {{ds.z, ds.w}, {ds8.x, ds8.y}};
#pragma unroll
      for (int h = 0; h < 2; h++) {
        float part = 0.0f;
#pragma unroll
        for (int half = 0; half < 2; half++)
#pragma unroll
          for (int o = 0; o < 2; o++) {
            const float dot = (float)(c[half][o][2 * h] * 256 + c[half][o][2 * h + 1]);
            const float sc = (float)(int8_t)(cur.s[h] >> (8 * (2 * half + o)));
            part = fmaf(sc, fmaf(dot, o ? ds.y : ds.x, -32.0f * sums[half][o]), part);
          }
        const float d = __half2float(*reinterpret_cast<const __half*>(&cur.dd[h]));
        acc[r][h] = fmaf(d, part, acc[r][h]);
      }
#else
      int cl[4] = {0, 0, 0, 0}, ch[4] = {0, 0, 0, 0};
#pragma unroll
      for (int jj = 0; jj < 4; jj++) {
        constexpr uint32_t L = 0x0F0F0F0Fu, H = 0xF0F0F0F0u;
        imma(cl, a0[jj] & L, a1[jj] & L, a2[jj] & L, a3[jj] & L, bl[jj][0], bl[jj][1]);
        imma(ch, a0[jj] & H, a1[jj] & H, a2[jj] & H, a3[jj] & H, bh[jj][0], bh[jj][1]);
      }
      // cells (row, hi) and (row, lo) of groups 2t (cl) and 2t + 1 (ch), rows g then g + 8
#pragma unroll
      for (int h = 0; h < 2; h++) {
        const float even = (float)(cl[2 * h] * 256 + cl[2 * h + 1]);
        const float odd = (float)(ch[2 * h] * 256 + ch[2 * h + 1]);
        const uint32_t sc = cur.s >> (16 * h), mn = cur.m >> (16 * h);
        const float part = even * ((float)(sc & 0xff) * ds.x) +
                           odd * ((float)((sc >> 8) & 0xff) * ds.y);
        const float offs = (float)(mn & 0xff) * ds.z + (float)((mn >> 8) & 0xff) * ds.w;
        const float2 dm = __half22float2(*reinterpret_cast<const __half2*>(&cur.dd[h]));
        acc[r][h] = fmaf(dm.x, part, fmaf(dm.y, offs, acc[r][h]));
      }
#endif
    }
  }
  float val[ROW_BLOCKS][2];  // lane (g, 0): rows g and g + 8 of each row block
#pragma unroll
  for (int r = 0; r < ROW_BLOCKS; r++)
#pragma unroll
    for (int h = 0; h < 2; h++) {
      float v = acc[r][h];  // groups 2t, 2t + 1: the four lanes of a row add theirs
      v += __shfl_xor_sync(FULL, v, 1);
      v += __shfl_xor_sync(FULL, v, 2);
      val[r][h] = v;
    }
  add_k_parts(red, val, w, g, t == 0);
#if ROPE
  float mate[ROW_BLOCKS][2];  // the other row of each row's pair (all lanes shuffle)
#pragma unroll
  for (int r = 0; r < ROW_BLOCKS; r++)
#pragma unroll
    for (int h = 0; h < 2; h++) mate[r][h] = __shfl_xor_sync(FULL, val[r][h], 4);
#endif
#pragma unroll
  for (int r = 0; r < ROW_BLOCKS; r++) {
    if (first0 + r * STEP < rows_out && t == 0 && w.kpart == 0) {
#if ACT
      out[row[r][0]] = activate(val[r][0] * alpha) * (val[r][1] * alpha);
#elif ROPE
#pragma unroll
      for (int h = 0; h < 2; h++) {
        const int i = rope_row0 + row[r][h];
        const float v = val[r][h] * alpha, m = mate[r][h] * alpha;
        const float c = turn[r][h][0], sn = turn[r][h][1];
        const float y = (i & 1) ? m * sn + v * c : v * c - m * sn;
        if (i < q_rows)
          q_out[i] = y;
        else if (i < q_rows + k_rows)
          k_cache[(size_t)pos * cache_stride + i - q_rows] = __float2half_rn(y);
        else
          v_cache[(size_t)pos * cache_stride + i - q_rows - k_rows] = __float2half_rn(v);
      }
#else
      out[(size_t)blockIdx.y * n + row[r][0]] = val[r][0] * alpha;
      out[(size_t)blockIdx.y * n + row[r][1]] = val[r][1] * alpha;
#endif
    }
  }
  if (task + w.stride < w.count) {
    start(task + w.stride);
#if ROPE
    prefetch_turns();
#endif
  }
  }
}
