"""RMSNorm fused with the residual add around it, and RoPE that writes K into the KV cache.

`residual_norm` covers every norm of the supported architectures in one kernel:

    h' = rms_norm(h, w_post)   if w_post is given (Gemma's post-attention / post-FFN norms)
    x' = x + h'                if h is given (the residual add)
    y  = rms_norm(x', w)       (w may be None: Gemma 4's V norm)

returning (x', y). Q/K norms are the same kernel over rows of head_dim.

`rope` rotates [T, H, D] by cos/sin tables indexed by position (a device tensor, so the step is
graph-safe) and can write its result into cache rows at those positions.

References: `impdiff.engine.model.rms_norm` and `apply_rope`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rms(x, mask, n, eps):
    ms = tl.sum(tl.where(mask, x * x, 0.0), axis=0) / n
    return x * (1.0 / tl.sqrt(ms + eps))


@triton.jit
def _residual_norm_kernel(x_ptr, h_ptr, wpost_ptr, w_ptr, xout_ptr, y_ptr, n, eps,
                          HAS_H: tl.constexpr, HAS_POST: tl.constexpr, HAS_W: tl.constexpr,
                          BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n
    x = tl.load(x_ptr + row * n + cols, mask=mask, other=0.0).to(tl.float32)
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
                                   num_warps=4 if n <= 2048 else 8)
    return xout.view(x.shape), y.view(x.shape)


@triton.jit
def _rope_kernel(x_ptr, cos_ptr, sin_ptr, pos_ptr, out_ptr,
                 stride_xt, stride_xh, stride_ot, stride_oh, stride_c,
                 N_ROT: tl.constexpr, D: tl.constexpr, NEOX: tl.constexpr,
                 OUT_AT_POS: tl.constexpr):
    """One (token, head) per program: a one-token step spreads over as many SMs as heads."""
    t = tl.program_id(0)
    h = tl.program_id(1)
    pos = tl.load(pos_ptr + t)
    src = x_ptr + t * stride_xt + h * stride_xh
    row = pos if OUT_AT_POS else t
    dst = out_ptr + row.to(tl.int64) * stride_ot + h * stride_oh
    ty = out_ptr.dtype.element_ty
    if N_ROT > 0:
        HALF: tl.constexpr = N_ROT // 2
        i = tl.arange(0, HALF)
        if NEOX:
            i1 = i
            i2 = i + HALF
        else:
            i1 = 2 * i
            i2 = 2 * i + 1
        c = tl.load(cos_ptr + pos * stride_c + i)
        s = tl.load(sin_ptr + pos * stride_c + i)
        x1 = tl.load(src + i1).to(tl.float32)
        x2 = tl.load(src + i2).to(tl.float32)
        tl.store(dst + i1, (x1 * c - x2 * s).to(ty))
        tl.store(dst + i2, (x1 * s + x2 * c).to(ty))
    if N_ROT < D:  # the unrotated tail is copied
        rest = N_ROT + tl.arange(0, D - N_ROT)
        tl.store(dst + rest, tl.load(src + rest).to(ty))


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
         n_rot: int, neox: bool, out: torch.Tensor | None = None) -> torch.Tensor:
    """x [T, H, D] rotated over its first n_rot dims at `positions` (cos/sin: [ctx, n_rot/2]).

    With `out` (a cache [S, H, D]) the result is written to rows `positions` of it instead;
    n_rot 0 is then a plain copy into the cache (V), one kernel for cast and scatter.
    """
    T, H, D = x.shape
    at_pos = out is not None
    if out is None:
        out = torch.empty((T, H, D), device=x.device, dtype=torch.float32)
    assert (D - n_rot) & (D - n_rot - 1) == 0, "the unrotated tail must be a power of two"
    _rope_kernel[(T, H)](x, cos, sin, positions, out, x.stride(0), x.stride(1), out.stride(0),
                         out.stride(1), cos.stride(0), N_ROT=n_rot, D=D, NEOX=neox,
                         OUT_AT_POS=at_pos, num_warps=1)
    return out
