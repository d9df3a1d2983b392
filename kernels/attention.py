"""Attention over a KV cache: one flash-attention kernel for prefill and decode.

Causal, with an optional sliding window (llama.cpp's: a key is masked when p_q - p_k >= window)
and optional logit soft-capping, grouped K/V heads. The rows of a tile are (query, head) pairs
of one K/V head's group, so a one-token decode still fills a tensor-core tile with the group's
heads. Query positions come from a device tensor and the key range is derived from them inside
the kernel, so a CUDA graph captured once replays at every position. For decode the key range
is also split across programs (flash decoding) and the partial softmaxes are merged after.

Reference: `impdiff.engine.model.attend` with `attention_mask`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import pdl_options, release_dependents, sm_count, wait_inputs


@triton.jit
def _attention_kernel(q_ptr, k_ptr, v_ptr, pos_ptr, o_ptr, m_ptr, l_ptr,
                      T, scale, softcap, window,
                      stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
                      stride_os, stride_ot, stride_oh, stride_ms,
                      GROUP: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr,
                      BLOCK_N: tl.constexpr, SOFTCAP: tl.constexpr, SPLITS: tl.constexpr,
                      PDL: tl.constexpr = False):
    wait_inputs(PDL)
    pid_m = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    r = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    qi = r // GROUP
    head = kvh * GROUP + r % GROUP
    rmask = qi < T
    d = tl.arange(0, D)
    q = tl.load(q_ptr + qi[:, None] * stride_qt + head[:, None] * stride_qh + d[None, :],
                mask=rmask[:, None], other=0.0).to(tl.float16)
    qpos = tl.load(pos_ptr + qi, mask=rmask, other=-1)
    hi = tl.max(qpos, axis=0) + 1
    first = tl.min(tl.where(rmask, qpos, 1 << 30), axis=0)
    lo = tl.where(window > 0, tl.maximum(first - window + 1, 0), 0)
    # this program's share of [lo, hi), whole key tiles
    share = tl.cdiv(tl.cdiv(hi - lo, SPLITS), BLOCK_N) * BLOCK_N
    start = lo + split * share
    end = tl.minimum(start + share, hi)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    for k0 in range(start, end, BLOCK_N):
        kk = k0 + tl.arange(0, BLOCK_N)
        kmask = kk < end
        k = tl.load(k_ptr + kk[:, None] * stride_kt + kvh * stride_kh + d[None, :],
                    mask=kmask[:, None], other=0.0).to(tl.float16)
        s = tl.dot(q, tl.trans(k)) * scale
        if SOFTCAP:
            s = softcap * (1.0 - 2.0 / (tl.exp(2.0 * s / softcap) + 1.0))
        allowed = kmask[None, :] & (kk[None, :] <= qpos[:, None]) \
            & ((window <= 0) | (qpos[:, None] - kk[None, :] < window))
        s = tl.where(allowed, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp(s - m_safe[:, None])
        rescale = tl.exp(m_i - m_safe)
        l_i = l_i * rescale + tl.sum(p, axis=1)
        v = tl.load(v_ptr + kk[:, None] * stride_vt + kvh * stride_vh + d[None, :],
                    mask=kmask[:, None], other=0.0).to(tl.float16)
        acc = acc * rescale[:, None] + tl.dot(p.to(tl.float16), v)
        m_i = m_new

    o = o_ptr + split * stride_os + qi[:, None] * stride_ot + head[:, None] * stride_oh + d[None, :]
    # late: released at the start, a one-token step measured 349.4 -> 337.7 t/s (8B Q4_K_M)
    release_dependents(PDL)
    if SPLITS == 1:
        tl.store(o, acc / l_i[:, None], mask=rmask[:, None])
    else:  # unnormalised, with its running max and sum, for the merge
        tl.store(o, acc, mask=rmask[:, None])
        ml = split * stride_ms + qi * (GROUP * tl.num_programs(1)) + head
        tl.store(m_ptr + ml, m_i, mask=rmask)
        tl.store(l_ptr + ml, l_i, mask=rmask)


def decode_splits(n_kv_heads: int, device: torch.device) -> int:
    """Key-range splits for a one-token step: enough programs to cover the SMs."""
    return max(1, min(32, triton.next_power_of_2(triton.cdiv(sm_count(device), n_kv_heads))))


def attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
              positions: torch.Tensor, scale: float, window: int = 0, softcap: float = 0.0,
              splits: int = 1) -> torch.Tensor:
    """q [T, H, D] at `positions` [T] (int32, ascending) against the cache [S, Hkv, D] whose
    rows 0..positions[-1] are filled -> [T, H, D] float32."""
    T, H, D = q.shape
    n_kv = k_cache.shape[1]
    group = H // n_kv
    block_m = 16 if T * group <= 16 else (64 if D <= 128 else 32)
    # a one-token step's few query rows leave registers for wider key tiles (H100, D 128, 1024
    # keys: 13.8 us against 19.6 with 64)
    block_n = (128 if block_m == 16 else 64) if D <= 128 else 32
    grid = (triton.cdiv(T * group, block_m), n_kv, splits)
    if splits == 1:
        out = torch.empty((1, T, H, D), device=q.device, dtype=torch.float32)
        m = l = out  # unused
    else:
        out = torch.empty((splits, T, H, D), device=q.device, dtype=torch.float32)
        m = torch.empty((splits, T, H), device=q.device, dtype=torch.float32)
        l = torch.empty_like(m)
    _attention_kernel[grid](q, k_cache, v_cache, positions, out, m, l, T, scale, softcap, window,
                            q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1),
                            v_cache.stride(0), v_cache.stride(1), out.stride(0), out.stride(1),
                            out.stride(2), m.stride(0) if splits > 1 else 0,
                            GROUP=group, D=D, BLOCK_M=block_m, BLOCK_N=block_n,
                            SOFTCAP=softcap > 0, SPLITS=splits, num_warps=4,
                            **pdl_options(q.device, one_token=T == 1))
    if splits == 1:
        return out[0]
    # merge the splits' partial softmaxes; an empty split has m = -inf and weighs nothing
    top = m.amax(dim=0, keepdim=True)
    weight = torch.exp(m - top)
    weight = torch.where(torch.isnan(weight), torch.zeros_like(weight), weight)
    num = (out * weight[..., None]).sum(dim=0)
    return num / (l * weight).sum(dim=0)[..., None]
