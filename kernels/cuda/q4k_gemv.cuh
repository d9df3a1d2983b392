// What the Q4_K tensor-core GEMVs (q4k_mma_gemv.cu: f16 operands, q4k_imma_gemv.cu: i8) share:
// their compile-time config, the weights' streaming load, the gated epilogue's activation, how
// warps take tasks, and the sums of a task's K-split warps. (cuda_driver.compile_cubin hashes
// this header with each source.)
#pragma once

#include <stdint.h>

#ifndef WARPS
#define WARPS 8
#endif
#ifndef ROW_BLOCKS
#define ROW_BLOCKS 1  // row blocks a warp computes side by side
#endif
#ifndef KSPLIT
#define KSPLIT 1  // warps of a block that share a task, each over 1/KSPLIT of the super-blocks
#endif
#ifndef PDL
#define PDL 0  // launched as a programmatic dependent (kernels/launch.py; sm_90+)
#endif
#ifndef ACT
#define ACT 0  // 0: plain; 1 silu, 2 gelu_tanh: [gate; up] rows in, act(gate) * up out
#endif

#define FULL 0xffffffffu

// weights are read once a token: past L1, first out of L2
__device__ __forceinline__ uint4 load_stream(const uint4* p, uint64_t policy) {
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.L2::cache_hint.v4.u32 {%0,%1,%2,%3}, [%4], %5;"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(p), "l"(policy));
  return r;
}

__device__ __forceinline__ float activate(float g) {
#if ACT == 1
  return g / (1.0f + expf(-g));
#else
  float z = 0.7978845608028654f * (g + 0.044715f * g * g * g);
  return g * (1.0f - 1.0f / (1.0f + expf(2.0f * z)));
#endif
}

// A warp's task is ROW_BLOCKS row blocks, which go through the super-blocks side by side so
// that each staged activation fragment is read once for all of them (shared memory was the
// busiest unit, read once per row block); a row block past the end recomputes the last one
// and stores nothing. The grid holds as many blocks as the SMs run at once and each warp
// takes every (grid warps)-th task: SMs end with equal shares where a block per set of rows
// left some SMs two blocks and others one, and the activation is staged once per block.
//
// KSPLIT > 1: the warps of a block form groups of KSPLIT that share a task, each warp over
// its share of the super-blocks, and add their sums through shared memory; a product of few
// rows then keeps every warp busy without a second kernel adding split-K partial sums (which
// also breaks the chain of dependent launches).
static_assert(WARPS % KSPLIT == 0 && (KSPLIT == 1 || WARPS / KSPLIT < 16),
              "whole groups of KSPLIT warps, each with a named barrier (1..15)");

struct Tasks {
  int group, kpart;  // the warp's group of KSPLIT warps, and its place in it
  int k_lo, k_hi;    // its share of the block's super-blocks
  int count, stride, first;  // tasks in all, between a group's tasks, the group's first
};

__device__ __forceinline__ Tasks tasks_of(int warp, int nt, int rows_out, int rows_per_task) {
  constexpr int GROUPS = WARPS / KSPLIT;
  Tasks w;
  w.group = warp / KSPLIT;
  w.kpart = warp % KSPLIT;
  w.k_lo = w.kpart * nt / KSPLIT;
  w.k_hi = (w.kpart + 1) * nt / KSPLIT;
  w.count = (rows_out + rows_per_task - 1) / rows_per_task;
  w.stride = gridDim.x * GROUPS;
  w.first = blockIdx.x * GROUPS + w.group;
  return w;
}

// The group's warps add their sums of a task in a fixed order through shared memory `red`
// (past the staged activation; KSPLIT * ROW_BLOCKS * 8 * H floats a group): val[r][h] is row g +
// 8h of row block r, written by the lanes `writer`.
template <int H>
__device__ __forceinline__ void add_k_parts(float* red, float (&val)[ROW_BLOCKS][H],
                                            const Tasks& w, int g, bool writer) {
#if KSPLIT > 1
  constexpr int ROWS = 8 * H;
  red += w.group * KSPLIT * ROW_BLOCKS * ROWS;  // [KSPLIT][ROW_BLOCKS][ROWS]
#pragma unroll
  for (int r = 0; r < ROW_BLOCKS; r++)
#pragma unroll
    for (int h = 0; h < H; h++)
      if (writer) red[(w.kpart * ROW_BLOCKS + r) * ROWS + g + 8 * h] = val[r][h];
  asm volatile("bar.sync %0, %1;" ::"r"(w.group + 1), "r"(KSPLIT * 32) : "memory");
#pragma unroll
  for (int r = 0; r < ROW_BLOCKS; r++)
#pragma unroll
    for (int h = 0; h < H; h++) {
      val[r][h] = 0.0f;
      for (int k = 0; k < KSPLIT; k++) val[r][h] += red[(k * ROW_BLOCKS + r) * ROWS + g + 8 * h];
    }
  asm volatile("bar.sync %0, %1;" ::"r"(w.group + 1), "r"(KSPLIT * 32) : "memory");
#endif
}
