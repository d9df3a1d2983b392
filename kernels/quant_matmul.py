"""Quantised matrix products: a fused dequantise-GEMV for decode, a dequantiser for prefill.

Every supported storage type is one `QuantFormat` over one plane layout, so a single GEMV
kernel and a single dequantise kernel serve them all. A weight row is cut into groups of `G`
values that share a scale (32 for the 32-value block types and Q4_K, 16 for Q6_K and NVFP4):

    value = s * (q - zero) + b            (CODEBOOK: value = s * e2m1(q))

planes, per row of the weight (`PackedWeight`):

* ``q``: the low bits of the G values of a group. For 4-bit types byte j holds value j in its
  low nibble and value j + G/2 in its high nibble (the 32-value block types store it that way;
  Q4_K, Q6_K and NVFP4 are repacked to it), so one contiguous load serves both halves; 8-bit
  and float types store values in order.
* ``qh``: the extra high bits of a group's values in one int32 (Q5_0/Q5_1's fifth bit, Q6_K's
  two top bits), value e at bit EXTRA*e.
* ``s``: the group scale, fp16 (SCALE=1) or an integer times an fp16 per 256-value super-block
  ``sd`` (SCALE=2, the K-quants; kept that way so the product is the same float32 product
  ggml's dequantiser forms).
* ``b``: the group offset, fp16 (BIAS=1, Q4_1/Q5_1's min) or minus an integer times an fp16 per
  super-block ``bd`` (BIAS=2, Q4_K's min; ``bd`` holds -dmin).

The GEMV sums q*x per group before scaling (s * Σ q x + b * Σ x), which is why the layout puts a
group's values in one tile. The torch reference for both kernels is `dequantize_reference`,
itself checked bit for bit against the engine's GGUF dequantiser in the tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import triton
import triton.language as tl

__all__ = ["QuantFormat", "PackedWeight", "FORMATS", "qgemv", "dequantize", "qmatmul",
           "dequantize_reference"]


@dataclass(frozen=True)
class QuantFormat:
    name: str
    group: int  # G: values per scale
    qbits: int  # 4: nibble plane; 8: byte plane (q8_0 keeps q + 128); 16: float plane
    extra: int = 0  # high bits per value in the int32 `qh` plane
    zero: int = 0
    scale: int = 1  # 0: none; 1: fp16 per group; 2: integer per group x fp16 per super-block
    bias: int = 0  # 0: none; 1: fp16 per group; 2: integer per group x fp16 per super-block
    codebook: bool = False  # NVFP4: q is an E2M1 code


FORMATS = {f.name: f for f in (
    QuantFormat("float", 32, 16, scale=0),
    QuantFormat("q8_0", 32, 8, zero=128),  # stored as q + 128 (unsigned, see _exact_float)
    QuantFormat("q4_0", 32, 4, zero=8),
    QuantFormat("q4_1", 32, 4, bias=1),
    QuantFormat("q5_0", 32, 4, extra=1, zero=16),
    QuantFormat("q5_1", 32, 4, extra=1, bias=1),
    QuantFormat("q4_k", 32, 4, scale=2, bias=2),
    QuantFormat("q5_k", 32, 4, extra=1, scale=2, bias=2),
    QuantFormat("q6_k", 16, 4, extra=2, zero=32, scale=2),
    QuantFormat("nvfp4", 16, 4, codebook=True),
)}
SUPER_BLOCK = 256


@dataclass
class PackedWeight:
    """A [n, k] weight in one of FORMATS; `alpha` multiplies the product (NVFP4's tensor scale)."""

    fmt: QuantFormat
    n: int
    k: int
    q: torch.Tensor
    qh: torch.Tensor | None = None
    s: torch.Tensor | None = None
    sd: torch.Tensor | None = None
    b: torch.Tensor | None = None
    bd: torch.Tensor | None = None
    alpha: float = 1.0
    _dense: dict = field(default_factory=dict, repr=False)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.planes() if t is not None)

    def planes(self) -> tuple:
        return self.q, self.qh, self.s, self.sd, self.b, self.bd

    def to(self, device) -> "PackedWeight":
        moved = [None if t is None else t.to(device) for t in self.planes()]
        return replace(self, q=moved[0], qh=moved[1], s=moved[2], sd=moved[3], b=moved[4],
                       bd=moved[5], _dense={})


def concat_rows(weights: list[PackedWeight]) -> PackedWeight:
    """One weight whose rows are those of `weights` in order (fused Q/K/V or gate/up)."""
    first = weights[0]
    assert all(w.fmt == first.fmt and w.k == first.k and w.alpha == first.alpha
               for w in weights), "only weights of one format, width and scale fuse"
    planes = [None if p is None else torch.cat([w.planes()[i] for w in weights])
              for i, p in enumerate(first.planes())]
    return PackedWeight(first.fmt, sum(w.n for w in weights), first.k, *planes,
                        alpha=first.alpha)


# --- the torch reference ----------------------------------------------------------------------

def _e2m1_torch(code: torch.Tensor) -> torch.Tensor:
    mag = code & 7
    e, m = (mag >> 1).float(), (mag & 1).float()
    val = torch.where(e == 0, m * 0.5, (1 + 0.5 * m) * torch.exp2(e - 1))
    return torch.where(code >= 8, -val, val)


def dequantize_reference(w: PackedWeight) -> torch.Tensor:
    """The weight as float32 [n, k], plain torch, straight from the plane definitions."""
    f, G, n = w.fmt, w.fmt.group, w.n
    groups = w.k // G
    if f.qbits == 4:
        b = w.q.view(n, groups, G // 2).to(torch.int32)
        q = torch.cat([b & 15, b >> 4], dim=-1)
    else:
        q = w.q.view(n, groups, G)
        q = q.float() if f.qbits == 16 else q.to(torch.int32)  # q8_0: unsigned, zero 128
    if f.extra:
        e = torch.arange(G, device=q.device, dtype=torch.int32) * f.extra
        q = q | (((w.qh.view(n, groups, 1) >> e) & ((1 << f.extra) - 1)) << 4)
    v = _e2m1_torch(q) if f.codebook else (q - f.zero).float()
    per_super = SUPER_BLOCK // G
    if f.scale:
        s = w.s.view(n, groups).float()
        if f.scale == 2:
            s = s * w.sd.float().repeat_interleave(per_super, dim=1)[:, :groups]
        v = v * s[..., None]
    if f.bias:
        b = w.b.view(n, groups).float()
        if f.bias == 2:
            b = b * w.bd.float().repeat_interleave(per_super, dim=1)[:, :groups]
        v = v + b[..., None]
    return v.reshape(n, w.k) * w.alpha


# --- kernels ----------------------------------------------------------------------------------

@triton.jit
def _e2m1(code):
    mag = code & 7
    e = (mag >> 1).to(tl.float32)
    m = (mag & 1).to(tl.float32)
    val = tl.where(e == 0, m * 0.5, (1.0 + 0.5 * m) * tl.exp2(e - 1.0))
    return tl.where(code >= 8, -val, val)


@triton.jit
def _group_values(q_ptr, qh_ptr, rows, groups, mask3, mask2, stride_q, stride_qh,
                  G: tl.constexpr, QBITS: tl.constexpr, EXTRA: tl.constexpr,
                  ZERO: tl.constexpr, CODEBOOK: tl.constexpr):
    """Values [rows, groups, G/2] of the first and second half of each group, unscaled."""
    H: tl.constexpr = G // 2
    j = tl.arange(0, H)
    if QBITS == 4:
        byte = tl.load(q_ptr + rows[:, None, None] * stride_q + groups[None, :, None] * H
                       + j[None, None, :], mask=mask3, other=0).to(tl.int32)
        lo = byte & 15
        hi = (byte >> 4) & 15
    else:
        base = q_ptr + rows[:, None, None] * stride_q + groups[None, :, None] * G + j[None, None, :]
        lo = tl.load(base, mask=mask3, other=0)
        hi = tl.load(base + H, mask=mask3, other=0)
        if QBITS == 8:
            lo = lo.to(tl.int32)
            hi = hi.to(tl.int32)
    if EXTRA > 0:
        word = tl.load(qh_ptr + rows[:, None] * stride_qh + groups[None, :], mask=mask2,
                       other=0)[:, :, None]
        shift = j[None, None, :] * EXTRA
        top: tl.constexpr = (1 << EXTRA) - 1
        lo = lo | (((word >> shift) & top) << 4)
        hi = hi | (((word >> (shift + H * EXTRA)) & top) << 4)
    if CODEBOOK:
        return _e2m1(lo), _e2m1(hi)
    if QBITS == 16:
        return lo.to(tl.float32), hi.to(tl.float32)
    return _exact_float(lo, ZERO), _exact_float(hi, ZERO)


@triton.jit
def _exact_float(q, ZERO: tl.constexpr):
    """q - ZERO as float32 for 0 <= q < 2^23, without an int-to-float conversion: q in the
    mantissa of 2^23 is the float 2^23 + q exactly, and the subtraction is exact too. The
    conversion instruction runs at a quarter of the FMA rate and would bound the GEMV."""
    return (q | 0x4B000000).to(tl.float32, bitcast=True) - (8388608.0 + ZERO)


@triton.jit
def _group_scales(s_ptr, sd_ptr, b_ptr, bd_ptr, rows, groups, mask2,
                  stride_s, stride_sd, stride_b, stride_bd,
                  G: tl.constexpr, SCALE: tl.constexpr, BIAS: tl.constexpr):
    """Scale and offset [rows, groups] of each group, float32."""
    PER_SUPER: tl.constexpr = 256 // G
    r = rows[:, None]
    g = groups[None, :]
    if SCALE == 0:
        s = tl.full(mask2.shape, 1.0, tl.float32)
    else:
        s = tl.load(s_ptr + r * stride_s + g, mask=mask2, other=0).to(tl.float32)
        if SCALE == 2:
            s = s * tl.load(sd_ptr + r * stride_sd + g // PER_SUPER, mask=mask2,
                            other=0).to(tl.float32)
    if BIAS == 0:
        b = tl.zeros(mask2.shape, tl.float32)
    else:
        b = tl.load(b_ptr + r * stride_b + g, mask=mask2, other=0).to(tl.float32)
        if BIAS == 2:
            b = b * tl.load(bd_ptr + r * stride_bd + g // PER_SUPER, mask=mask2,
                            other=0).to(tl.float32)
    return s, b


@triton.jit
def _activation(x, ACT: tl.constexpr):
    if ACT == 1:  # silu
        return x / (1.0 + tl.exp(-x))
    # gelu, tanh approximation; tanh(u) = 2 sigmoid(2u) - 1
    u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
    return x * (1.0 - 1.0 / (1.0 + tl.exp(2.0 * u)))


@triton.jit
def _load_x(x_ptr, offs, mask, K, ACT: tl.constexpr):
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if ACT > 0:  # x holds [gate | up]: the FFN's act(gate) * up, formed as it is read
        up = tl.load(x_ptr + K + offs, mask=mask, other=0.0).to(tl.float32)
        x = _activation(x, ACT) * up
    return x


@triton.jit
def _qgemv_kernel(x_ptr, out_ptr, q_ptr, qh_ptr, s_ptr, sd_ptr, b_ptr, bd_ptr,
                  N, K, groups_per_split, iters, alpha,
                  stride_q, stride_qh, stride_s, stride_sd, stride_b, stride_bd,
                  G: tl.constexpr, QBITS: tl.constexpr, EXTRA: tl.constexpr, ZERO: tl.constexpr,
                  CODEBOOK: tl.constexpr, SCALE: tl.constexpr, BIAS: tl.constexpr,
                  ACT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """out[split, n] = alpha * Σ_k W[n, k] x[k] over this program's rows and share of K."""
    H: tl.constexpr = G // 2
    NG: tl.constexpr = BLOCK_K // G
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    j = tl.arange(0, H)
    n_groups = K // G
    acc = tl.zeros([BLOCK_N, NG], tl.float32)
    # splits are whole tiles, so only the matrix's own end needs a mask
    for it in range(0, iters):
        groups = pid_k * groups_per_split + it * NG + tl.arange(0, NG)
        gmask = groups < n_groups
        mask2 = rmask[:, None] & gmask[None, :]
        mask3 = mask2[:, :, None]
        x_offs = groups[:, None] * G + j[None, :]
        x_lo = _load_x(x_ptr, x_offs, gmask[:, None], K, ACT)
        x_hi = _load_x(x_ptr, x_offs + H, gmask[:, None], K, ACT)
        v_lo, v_hi = _group_values(q_ptr, qh_ptr, rows, groups, mask3, mask2, stride_q,
                                   stride_qh, G, QBITS, EXTRA, ZERO, CODEBOOK)
        s, b = _group_scales(s_ptr, sd_ptr, b_ptr, bd_ptr, rows, groups, mask2, stride_s,
                             stride_sd, stride_b, stride_bd, G, SCALE, BIAS)
        dot = tl.sum(v_lo * x_lo[None, :, :] + v_hi * x_hi[None, :, :], axis=2)
        acc += dot * s + b * tl.sum(x_lo + x_hi, axis=1)[None, :]
    tl.store(out_ptr + pid_k * N + rows, tl.sum(acc, axis=1) * alpha, mask=rmask)


@triton.jit
def _dequant_kernel(out_ptr, q_ptr, qh_ptr, s_ptr, sd_ptr, b_ptr, bd_ptr, N, K, alpha,
                    stride_q, stride_qh, stride_s, stride_sd, stride_b, stride_bd,
                    G: tl.constexpr, QBITS: tl.constexpr, EXTRA: tl.constexpr,
                    ZERO: tl.constexpr, CODEBOOK: tl.constexpr, SCALE: tl.constexpr,
                    BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    H: tl.constexpr = G // 2
    NG: tl.constexpr = BLOCK_K // G
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    groups = tl.program_id(1) * NG + tl.arange(0, NG)
    j = tl.arange(0, H)
    mask2 = (rows < N)[:, None] & (groups < K // G)[None, :]
    mask3 = mask2[:, :, None]
    v_lo, v_hi = _group_values(q_ptr, qh_ptr, rows, groups, mask3, mask2, stride_q, stride_qh,
                               G, QBITS, EXTRA, ZERO, CODEBOOK)
    s, b = _group_scales(s_ptr, sd_ptr, b_ptr, bd_ptr, rows, groups, mask2, stride_s, stride_sd,
                         stride_b, stride_bd, G, SCALE, BIAS)
    out = out_ptr + rows[:, None, None].to(tl.int64) * K + groups[None, :, None] * G \
        + j[None, None, :]
    w_lo = (v_lo * s[:, :, None] + b[:, :, None]) * alpha
    w_hi = (v_hi * s[:, :, None] + b[:, :, None]) * alpha
    tl.store(out, w_lo.to(out_ptr.dtype.element_ty), mask=mask3)
    tl.store(out + H, w_hi.to(out_ptr.dtype.element_ty), mask=mask3)


# --- launchers --------------------------------------------------------------------------------

def _plane_args(w: PackedWeight) -> list:
    dummy = w.q  # absent planes are never read (their constexpr switch is off)
    planes = [p if p is not None else dummy for p in (w.q, w.qh, w.s, w.sd, w.b, w.bd)]
    strides = [p.stride(0) if p.dim() > 1 else 0 for p in planes]
    return planes, strides


def _fmt_args(f: QuantFormat) -> dict:
    return dict(G=f.group, QBITS=f.qbits, EXTRA=f.extra, ZERO=f.zero, CODEBOOK=f.codebook,
                SCALE=f.scale, BIAS=f.bias)


@dataclass(frozen=True)
class GemvConfig:
    block_n: int
    block_k: int
    split_k: int
    num_warps: int


def gemv_config(w: PackedWeight, n_sm: int) -> GemvConfig:
    """Tiles for a weight: enough programs to fill every SM twice over, splitting K when the
    rows alone do not (the K/V projections of a GQA model have few rows)."""
    block_n = 16 if w.fmt.qbits == 4 else 8
    block_k = 256 if w.k % 256 == 0 or w.k > 1024 else 128
    programs = triton.cdiv(w.n, block_n)
    split = 1
    while programs * split < 2 * n_sm and w.k // (block_k * split * 2) >= 2:
        split *= 2
    return GemvConfig(block_n, block_k, split, 4)


_SM_COUNT: dict = {}


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 4
    if device not in _SM_COUNT:
        _SM_COUNT[device] = torch.cuda.get_device_properties(device).multi_processor_count
    return _SM_COUNT[device]


def qgemv(x: torch.Tensor, w: PackedWeight, act: int = 0, config: GemvConfig | None = None,
          out: torch.Tensor | None = None) -> torch.Tensor:
    """W x for one token: x [k] float32 (or [2k] = [gate | up] with act 1 silu / 2 gelu) -> [n].

    Deterministic: a split K writes partial sums that are added in a fixed order.
    """
    cfg = config or gemv_config(w, _sm_count(x.device))
    groups = w.k // w.fmt.group
    per_split = triton.cdiv(triton.cdiv(groups, cfg.split_k), cfg.block_k // w.fmt.group) \
        * (cfg.block_k // w.fmt.group)
    partial = torch.empty((cfg.split_k, w.n), device=x.device, dtype=torch.float32) \
        if cfg.split_k > 1 or out is None else out.view(1, w.n)
    planes, strides = _plane_args(w)
    grid = (triton.cdiv(w.n, cfg.block_n), cfg.split_k)
    _qgemv_kernel[grid](x, partial, *planes, w.n, w.k, per_split,
                        per_split // (cfg.block_k // w.fmt.group), w.alpha, *strides,
                        **_fmt_args(w.fmt), ACT=act, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
                        num_warps=cfg.num_warps)
    if cfg.split_k == 1:
        return partial.view(w.n)
    return torch.sum(partial, dim=0, out=out)


def dequantize(w: PackedWeight, dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """The weight as a dense [n, k] tensor of `dtype` (kernel twin of `dequantize_reference`)."""
    out = torch.empty((w.n, w.k), device=w.q.device, dtype=dtype)
    planes, strides = _plane_args(w)
    block_n, block_k = 32, 128
    grid = (triton.cdiv(w.n, block_n), triton.cdiv(w.k, block_k))
    _dequant_kernel[grid](out, *planes, w.n, w.k, w.alpha, *strides, **_fmt_args(w.fmt),
                          BLOCK_N=block_n, BLOCK_K=block_k, num_warps=4)
    return out


def _pow2_row_scale(x: torch.Tensor) -> torch.Tensor:
    """Per-row powers of two that bring |x| under 1: fp16 neither overflows on Gemma's large
    activations nor loses anything to the rescaling (a power of two is exact)."""
    amax = x.abs().amax(dim=-1, keepdim=True).clamp_min(1e-30)
    return torch.exp2(torch.ceil(torch.log2(amax)))


def qmatmul(x: torch.Tensor, w: PackedWeight, act: int = 0, cache_dense: bool = False
            ) -> torch.Tensor:
    """x [t, k] (or [t, 2k] = [gate | up] with act, see qgemv) times W^T -> [t, n] float32.

    One token: the fused GEMV. More: dequantise W to fp16 (kept when cache_dense) and one
    cuBLAS product on per-row-rescaled fp16 activations, accumulated in float32.
    """
    if x.shape[0] == 1:
        return qgemv(x.reshape(-1).contiguous(), w, act).view(1, w.n)
    if act:
        k = x.shape[-1] // 2
        x = _activation_torch(x[..., :k], act) * x[..., k:]
    dense = w._dense.get("fp16") if cache_dense else None
    if dense is None:
        dense = dequantize(w, torch.float16)
        if cache_dense:
            w._dense["fp16"] = dense
    scale = _pow2_row_scale(x)
    y = torch.matmul((x / scale).to(torch.float16), dense.T)
    return y.float() * scale


def _activation_torch(x: torch.Tensor, act: int) -> torch.Tensor:
    if act == 1:
        return torch.nn.functional.silu(x)
    return torch.nn.functional.gelu(x, approximate="tanh")
