// Stop 18: the ceiling of one kernel streaming N bytes once (what a GEMV's weight read can reach),
// by 16-byte loads in flight per thread (UNROLL) and resident blocks per SM.
#include <stdint.h>
#ifndef UNROLL
#define UNROLL 4
#endif
#ifndef PDL
#define PDL 0
#endif
__device__ __forceinline__ uint4 ld(const uint4* p) {
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
  return r;
}
extern "C" __global__ void stream_read(const uint4* __restrict__ p, long long n16, uint32_t* out) {
#if PDL
  asm volatile("griddepcontrol.launch_dependents;");  // constant input: no wait at all
#endif
  uint32_t acc = 0;
  const long long stride = (long long)gridDim.x * blockDim.x * UNROLL;
  for (long long i = (long long)blockIdx.x * blockDim.x * UNROLL + threadIdx.x; i < n16; i += stride) {
    uint4 v[UNROLL];
#pragma unroll
    for (int u = 0; u < UNROLL; u++) {
      const long long j = i + (long long)u * blockDim.x;
      v[u] = j < n16 ? ld(p + j) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < UNROLL; u++) acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
  }
  if (acc == 0x9e3779b9u) out[0] = acc;  // never true in practice; keeps the loads
}
