"""RMSNorm fused with the residual add around it, and RoPE that writes K into the KV cache.

`residual_norm` covers every norm of the supported architectures in one kernel:

    h' = rms_norm(h, w_post)   if w_post is given (Gemma's post-attention / post-FFN norms)
    x' = x + h'                if h is given (the residual add)
    y  = rms_norm(x', w)       (w may be None: Gemma 4's V norm)

returning (x', y). Q/K norms are the same kernel over rows of head_dim.

`rope` rotates [T, H, D] by cos/sin tables indexed by position (a device tensor, so the step is
graph-safe) and can write its result into cache rows at those positions. `rope_qkv` is the same
kernel over a fused Q/K/V projection: per-head Q/K norms, both rotations and both cache writes
in one launch (the plain decode path's whole step between the projection and attention).

References: `impdiff.engine.model.rms_norm` and `apply_rope`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import pdl_options, release_dependents, wait_inputs


@triton.jit
def _rms(x, mask, n, eps):
    ms = tl.sum(tl.where(mask, x * x, 0.0), axis=0) / n
    return x * (1.0 / tl.sqrt(ms + eps))


@triton.jit
def _residual_norm_kernel(x_ptr, h_ptr, wpost_ptr, w_ptr, xout_ptr, y_ptr, n, eps,
                          HAS_H: tl.constexpr, HAS_POST: tl.constexpr, HAS_W: tl.constexpr,
                          BLOCK: tl.constexpr, PDL: tl.constexpr = False):
    wait_inputs(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n
    x = tl.load(x_ptr + row * n + cols, mask=mask, other=0.0).to(tl.float32)
    release_dependents(PDL)  # (placement not tuned: one program in a one-token step)
    if HAS_H:
        h = tl.load(h_ptr + row * n + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_POST:
            h = _rms(h, mask, n, eps) * tl.load(wpost_ptr + cols, mask=mask, other=0.0)
        x = x + h
        tl.store(xout_ptr + row * n + cols, x, mask=mask)
    y = _rms(x, mask, n, eps)
    if HAS_W:
        y = y * tl.load(w_ptr + cols, mask=mask, other=0.0)
    tl.store(y_ptr + row * n + cols, y, mask=mask)


def residual_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float,
                  h: torch.Tensor | None = None, post_weight: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(x + [rms_norm(h, post_weight) or h], rms_norm(of that, weight)) over the last dim."""
    n = x.shape[-1]
    x2 = x.reshape(-1, n).contiguous()
    rows = x2.shape[0]
    y = torch.empty_like(x2, dtype=torch.float32)
    xout = torch.empty_like(y) if h is not None else x2
    hh = h.reshape(-1, n).contiguous() if h is not None else x2
    _residual_norm_kernel[(rows,)](x2, hh, post_weight if post_weight is not None else x2,
                                   weight if weight is not None else x2, xout, y, n, eps,
                                   HAS_H=h is not None, HAS_POST=post_weight is not None,
                                   HAS_W=weight is not None, BLOCK=triton.next_power_of_2(n),
                                   num_warps=4 if n <= 2048 else 16,
                                   **pdl_options(x.device, one_token=rows == 1))
    return xout.view(x.shape), y.view(x.shape)


@triton.jit
def _rope_head(src, dst, cos_ptr, sin_ptr, w_ptr, eps, N_ROT: tl.constexpr, D: tl.constexpr,
               NEOX: tl.constexpr, NORM: tl.constexpr):
    """One head: optionally RMS-normed (times w), rotated over its first N_ROT dims (the
    rest copied), written to dst in dst's dtype."""
    ty = dst.dtype.element_ty
    HALF: tl.constexpr = N_ROT // 2
    i = tl.arange(0, max(HALF, 1))
    i1 = i if NEOX else 2 * i
    i2 = i + HALF if NEOX else 2 * i + 1
    rest = N_ROT + tl.arange(0, max(D - N_ROT, 1))
    if N_ROT > 0:
        x1 = tl.load(src + i1).to(tl.float32)
        x2 = tl.load(src + i2).to(tl.float32)
    if N_ROT < D:
        tail = tl.load(src + rest).to(tl.float32)
    if NORM:
        ss = 0.0
        if N_ROT > 0:
            ss += tl.sum(x1 * x1, axis=0) + tl.sum(x2 * x2, axis=0)
        if N_ROT < D:
            ss += tl.sum(tail * tail, axis=0)
        inv = 1.0 / tl.sqrt(ss / D + eps)
        if N_ROT > 0:
            x1 = x1 * inv * tl.load(w_ptr + i1)
            x2 = x2 * inv * tl.load(w_ptr + i2)
        if N_ROT < D:
            tail = tail * inv * tl.load(w_ptr + rest)
    if N_ROT > 0:
        c = tl.load(cos_ptr + i)
        s = tl.load(sin_ptr + i)
        tl.store(dst + i1, (x1 * c - x2 * s).to(ty))
        tl.store(dst + i2, (x1 * s + x2 * c).to(ty))
    if N_ROT < D:
        tl.store(dst + rest, tail.to(ty))


@triton.jit
def _rope_kernel(x_ptr, cos_ptr, sin_ptr, pos_ptr, q_ptr, k_ptr, v_ptr, qn_ptr, kn_ptr, eps,
                 HQ, HK, stride_xt, stride_xh, stride_qt, stride_qh, stride_kt, stride_kh,
                 stride_vt, stride_vh, stride_c,
                 N_ROT: tl.constexpr, D: tl.constexpr, NEOX: tl.constexpr,
                 AT_POS: tl.constexpr, NORM: tl.constexpr, PDL: tl.constexpr = False):
    """One (token, head) per program over the heads of x side by side: the first HQ go to q
    (row t), the next HK to k and the rest, copied unrotated, to v (rows at the token's
    position when AT_POS: the caches). A one-token step spreads over as many SMs as heads."""
    wait_inputs(PDL)
    release_dependents(PDL)
    t = tl.program_id(0)
    h = tl.program_id(1)
    pos = tl.load(pos_ptr + t)
    src = x_ptr + t * stride_xt + h * stride_xh
    row = (pos if AT_POS else t).to(tl.int64)
    cos, sin = cos_ptr + pos * stride_c, sin_ptr + pos * stride_c
    if h < HQ:
        _rope_head(src, q_ptr + t * stride_qt + h * stride_qh, cos, sin, qn_ptr, eps, N_ROT, D,
                   NEOX, NORM)
    elif h < HQ + HK:
        _rope_head(src, k_ptr + row * stride_kt + (h - HQ) * stride_kh, cos, sin, kn_ptr, eps,
                   N_ROT, D, NEOX, NORM)
    else:
        _rope_head(src, v_ptr + row * stride_vt + (h - HQ - HK) * stride_vh, cos, sin, kn_ptr,
                   eps, 0, D, NEOX, False)


def rope_qkv(qkv: torch.Tensor, n_q: int, n_kv: int, cos: torch.Tensor, sin: torch.Tensor,
             positions: torch.Tensor, n_rot: int, neox: bool, k_cache: torch.Tensor,
             v_cache: torch.Tensor, q_norm: torch.Tensor | None = None,
             k_norm: torch.Tensor | None = None, eps: float = 0.0) -> torch.Tensor:
    """A fused Q/K/V projection [T, n_q + 2 n_kv, D] in one kernel: Q (and K) per-head
    RMS-normed when weights are given, rotated; Q returned [T, n_q, D] float32, K and V written
    into rows `positions` of their caches [S, n_kv, D]."""
    T, H, D = qkv.shape
    assert H == n_q + 2 * n_kv and (q_norm is None) == (k_norm is None)
    q = torch.empty((T, n_q, D), device=qkv.device, dtype=torch.float32)
    _launch_rope(qkv, cos, sin, positions, n_rot, neox, (q, k_cache, v_cache), n_q, n_kv, True,
                 q_norm, k_norm, eps)
    return q


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
         n_rot: int, neox: bool, out: torch.Tensor | None = None) -> torch.Tensor:
    """x [T, H, D] rotated over its first n_rot dims at `positions` (cos/sin: [ctx, n_rot/2]).

    With `out` (a cache [S, H, D]) the result is written to rows `positions` of it instead;
    n_rot 0 is then a plain copy into the cache (V), one kernel for cast and scatter.
    """
    T, H, D = x.shape
    if out is None:
        out = torch.empty((T, H, D), device=x.device, dtype=torch.float32)
        _launch_rope(x, cos, sin, positions, n_rot, neox, (out, out, out), H, 0, False)
    else:  # as the K segment of a fused launch (n_rot 0: the V segment's copy)
        _launch_rope(x, cos, sin, positions, n_rot, neox, (out, out, out), 0,
                     H if n_rot else 0, True)
    return out


def _launch_rope(x, cos, sin, positions, n_rot, neox, outs, n_q, n_k, at_pos,
                 q_norm=None, k_norm=None, eps=0.0):
    T, H, D = x.shape
    assert (D - n_rot) & (D - n_rot - 1) == 0, "the unrotated tail must be a power of two"
    q, k, v = outs
    norm = q_norm is not None
    _rope_kernel[(T, H)](x, cos, sin, positions, q, k, v, q_norm if norm else x,
                         k_norm if norm else x, eps, n_q, n_k, x.stride(0), x.stride(1),
                         q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0),
                         v.stride(1), cos.stride(0), N_ROT=n_rot, D=D, NEOX=neox,
                         AT_POS=at_pos, NORM=norm, num_warps=1,
                         **pdl_options(x.device, one_token=T == 1))
