"""Quantised matrix products: a fused dequantise-GEMV for decode, a dequantiser for prefill.

Every supported storage type is one `QuantFormat` over one plane layout, so a single GEMV
kernel and a single dequantise kernel serve them all. A weight row is cut into groups of `G`
values that share a scale (32 for the 32-value block types and Q4_K, 16 for Q6_K and NVFP4):

    value = s * (q - zero) + b            (CODEBOOK: value = s * e2m1(q))

planes, per row of the weight (`PackedWeight`):

* ``q``: the low bits of each value, in order along the row: for 4-bit types byte c holds
  value 2c in its low nibble and value 2c+1 in its high one (NVFP4's own packing; ggml's
  blocks are repacked to it at load), so a row is one contiguous, vectorisable load and the
  nibbles interleave back into value order in registers; 8-bit and float types are plain.
* ``qh``: the extra high bits of a group's values in one int32 (Q5_0/Q5_1's fifth bit, Q6_K's
  two top bits), value e at bit EXTRA*e.
* ``s``: the group scale, fp16 (SCALE=1) or an integer times an fp16 per 256-value super-block
  ``sd`` (SCALE=2, the K-quants; kept that way so the product is the same float32 product
  ggml's dequantiser forms).
* ``b``: the group offset, fp16 (BIAS=1, Q4_1/Q5_1's min) or minus an integer times an fp16 per
  super-block ``bd`` (BIAS=2, Q4_K's min; ``bd`` holds -dmin).

The GEMV sums q*x per group before scaling (s * Σ q x + b * Σ x): one multiply-add per value,
the scales once per group. The torch reference for both kernels is `dequantize_reference`,
itself checked bit for bit against the engine's GGUF dequantiser in the tests.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

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

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.planes() if t is not None)

    def planes(self) -> tuple:
        return self.q, self.qh, self.s, self.sd, self.b, self.bd

    def to(self, device) -> "PackedWeight":
        moved = [None if t is None else t.to(device) for t in self.planes()]
        return replace(self, q=moved[0], qh=moved[1], s=moved[2], sd=moved[3], b=moved[4],
                       bd=moved[5])


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
        q = torch.stack([b & 15, b >> 4], dim=-1).reshape(n, groups, G)
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
def _tile_values(q_ptr, qh_ptr, rows, rmask, g0, n_groups, stride_q, stride_qh,
                 G: tl.constexpr, NG: tl.constexpr, QBITS: tl.constexpr, EXTRA: tl.constexpr,
                 ZERO: tl.constexpr, CODEBOOK: tl.constexpr):
    """Unscaled values [rows, NG groups, G] of groups g0..g0+NG-1, float32, value order."""
    groups = g0 + tl.arange(0, NG)
    if QBITS == 4:
        c = g0 * (G // 2) + tl.arange(0, NG * G // 2)
        cmask = rmask[:, None] & (c < n_groups * (G // 2))[None, :]
        byte = tl.load(q_ptr + rows[:, None] * stride_q + c[None, :], mask=cmask,
                       other=0).to(tl.int32)
        q = tl.reshape(tl.join(byte & 15, (byte >> 4) & 15), (rows.shape[0], NG, G))
    else:
        c = g0 * G + tl.arange(0, NG * G)
        cmask = rmask[:, None] & (c < n_groups * G)[None, :]
        q = tl.load(q_ptr + rows[:, None] * stride_q + c[None, :], mask=cmask, other=0)
        q = tl.reshape(q, (rows.shape[0], NG, G))
        if QBITS == 8:
            q = q.to(tl.int32)
    if EXTRA > 0:  # loaded with the tile's rank, so it broadcasts in the tile's layout
        word = tl.load(qh_ptr + rows[:, None, None] * stride_qh + groups[None, :, None],
                       mask=rmask[:, None, None] & (groups < n_groups)[None, :, None], other=0)
        e = tl.arange(0, G)[None, None, :] * EXTRA
        q = q | (((word >> e) & ((1 << EXTRA) - 1)) << 4)
    # one return: the compiler traces every statement after a constexpr-guarded return
    if CODEBOOK:
        v = _e2m1(q)
    elif QBITS == 16:
        v = q.to(tl.float32)
    else:
        v = _exact_float(q, ZERO)
    return v


@triton.jit
def _exact_float(q, ZERO: tl.constexpr):
    """q - ZERO as float32 for 0 <= q < 2^23, without an int-to-float conversion: q in the
    mantissa of 2^23 is the float 2^23 + q exactly, and the subtraction is exact too. The
    conversion instruction runs at a quarter of the FMA rate and would bound the GEMV."""
    return (q | 0x4B000000).to(tl.float32, bitcast=True) - (8388608.0 + ZERO)


@triton.jit
def _group_scales(s_ptr, sd_ptr, b_ptr, bd_ptr, rows, rmask, g0, n_groups,
                  stride_s, stride_sd, stride_b, stride_bd,
                  G: tl.constexpr, NG: tl.constexpr, SCALE: tl.constexpr, BIAS: tl.constexpr):
    """Scale and offset [rows, NG] of groups g0..g0+NG-1, float32."""
    PER_SUPER: tl.constexpr = 256 // G
    r = rows[:, None]
    g = (g0 + tl.arange(0, NG))[None, :]
    mask2 = rmask[:, None] & (g < n_groups)
    if SCALE == 0:
        s = tl.full((rows.shape[0], NG), 1.0, tl.float32)
    else:
        s = tl.load(s_ptr + r * stride_s + g, mask=mask2, other=0).to(tl.float32)
        if SCALE == 2:
            s = s * tl.load(sd_ptr + r * stride_sd + g // PER_SUPER, mask=mask2,
                            other=0).to(tl.float32)
    if BIAS == 0:
        b = tl.zeros((rows.shape[0], NG), tl.float32)
    else:
        b = tl.load(b_ptr + r * stride_b + g, mask=mask2, other=0).to(tl.float32)
        if BIAS == 2:
            b = b * tl.load(bd_ptr + r * stride_bd + g // PER_SUPER, mask=mask2,
                            other=0).to(tl.float32)
    return s, b


@triton.jit
def _activation(x, ACT: tl.constexpr):
    if ACT == 1:  # silu
        y = x / (1.0 + tl.exp(-x))
    else:  # gelu, tanh approximation; tanh(u) = 2 sigmoid(2u) - 1
        u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
        y = x * (1.0 - 1.0 / (1.0 + tl.exp(2.0 * u)))
    return y


@triton.jit
def _load_x(x_ptr, g0, n_groups, K, G: tl.constexpr, NG: tl.constexpr, ACT: tl.constexpr):
    """x over groups g0..g0+NG-1 as [1, NG, G]; with ACT, x holds [gate | up] and this is the
    FFN's act(gate) * up, formed as it is read."""
    k = g0 * G + tl.arange(0, NG * G)
    mask = k < n_groups * G
    x = tl.load(x_ptr + k, mask=mask, other=0.0).to(tl.float32)
    if ACT > 0:
        up = tl.load(x_ptr + K + k, mask=mask, other=0.0).to(tl.float32)
        x = _activation(x, ACT) * up
    return tl.reshape(x, (1, NG, G))


@triton.jit
def _qgemv_kernel(x_ptr, out_ptr, q_ptr, qh_ptr, s_ptr, sd_ptr, b_ptr, bd_ptr,
                  N, K, groups_per_split, iters, alpha,
                  stride_q, stride_qh, stride_s, stride_sd, stride_b, stride_bd,
                  G: tl.constexpr, QBITS: tl.constexpr, EXTRA: tl.constexpr, ZERO: tl.constexpr,
                  CODEBOOK: tl.constexpr, SCALE: tl.constexpr, BIAS: tl.constexpr,
                  ACT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """out[split, n] = alpha * Σ_k W[n, k] x[k] over this program's rows and share of K."""
    NG: tl.constexpr = BLOCK_K // G
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    n_groups = K // G
    acc = tl.zeros((BLOCK_N, NG), tl.float32)
    # splits are whole tiles, so only the matrix's own end needs a mask
    for it in range(0, iters):
        g0 = tl.program_id(1) * groups_per_split + it * NG
        x = _load_x(x_ptr, g0, n_groups, K, G, NG, ACT)
        v = _tile_values(q_ptr, qh_ptr, rows, rmask, g0, n_groups, stride_q, stride_qh, G, NG,
                         QBITS, EXTRA, ZERO, CODEBOOK)
        s, b = _group_scales(s_ptr, sd_ptr, b_ptr, bd_ptr, rows, rmask, g0, n_groups,
                             stride_s, stride_sd, stride_b, stride_bd, G, NG, SCALE, BIAS)
        acc += tl.sum(v * x, axis=2) * s + b * tl.sum(x, axis=2)
    tl.store(out_ptr + tl.program_id(1) * N + rows, tl.sum(acc, axis=1) * alpha, mask=rmask)


@triton.jit
def _dequant_kernel(out_ptr, q_ptr, qh_ptr, s_ptr, sd_ptr, b_ptr, bd_ptr, N, K, alpha,
                    stride_q, stride_qh, stride_s, stride_sd, stride_b, stride_bd,
                    G: tl.constexpr, QBITS: tl.constexpr, EXTRA: tl.constexpr,
                    ZERO: tl.constexpr, CODEBOOK: tl.constexpr, SCALE: tl.constexpr,
                    BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    NG: tl.constexpr = BLOCK_K // G
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    g0 = tl.program_id(1) * NG
    n_groups = K // G
    v = _tile_values(q_ptr, qh_ptr, rows, rmask, g0, n_groups, stride_q, stride_qh, G, NG,
                     QBITS, EXTRA, ZERO, CODEBOOK)
    s, b = _group_scales(s_ptr, sd_ptr, b_ptr, bd_ptr, rows, rmask, g0, n_groups, stride_s,
                         stride_sd, stride_b, stride_bd, G, NG, SCALE, BIAS)
    w = tl.reshape((v * s[:, :, None] + b[:, :, None]) * alpha, (BLOCK_N, BLOCK_K))
    k = g0 * G + tl.arange(0, BLOCK_K)
    out = out_ptr + rows[:, None].to(tl.int64) * K + k[None, :]
    tl.store(out, w.to(out_ptr.dtype.element_ty), mask=rmask[:, None] & (k < K)[None, :])


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
    """Tiles for a weight: a tuned entry when the tuning table has this (format, n, k), else
    few rows and a long stretch of K per program, K split only when the rows leave SMs idle."""
    tuned = _tuning_table().get(f"{w.fmt.name} {w.n} {w.k}")
    if tuned:
        return GemvConfig(*tuned)
    block_n = 4
    block_k = min(2048, triton.next_power_of_2(w.k))
    programs = triton.cdiv(w.n, block_n)
    split = 1
    while programs * split < n_sm and w.k // (block_k * split * 2) >= 1:
        split *= 2
    return GemvConfig(block_n, block_k, split, 4)


TUNING_ENV = "IMPDIFF_GEMV_TABLE"
TUNING_DIR = Path(__file__).parent / "tuning"


@functools.cache
def _tuning_table() -> dict:
    """{"q4_k 14336 4096": [block_n, block_k, split_k, num_warps], ...}: the JSON file named by
    $IMPDIFF_GEMV_TABLE, else the one shipped for this GPU (tuning/<device name>.json), both
    written by benchmarks/gemv_sweep.py --write-table on that GPU."""
    path = os.environ.get(TUNING_ENV)
    if not path and torch.cuda.is_available():
        shipped = TUNING_DIR / (torch.cuda.get_device_name().replace(" ", "_") + ".json")
        path = str(shipped) if shipped.is_file() else None
    return json.loads(Path(path).read_text()) if path else {}


_SM_COUNT: dict = {}


def sm_count(device: torch.device) -> int:
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
    cfg = config or gemv_config(w, sm_count(x.device))
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


def qmatmul(x: torch.Tensor, w: PackedWeight) -> torch.Tensor:
    """x [t, k] times W^T -> [t, n] float32.

    One token: the fused GEMV. More: dequantise W to fp16 and one cuBLAS product on
    per-row-rescaled fp16 activations, accumulated in float32.
    """
    if x.shape[0] == 1:
        return qgemv(x.reshape(-1).contiguous(), w).view(1, w.n)
    scale = _pow2_row_scale(x)
    y = torch.matmul((x / scale).to(torch.float16), dequantize(w, torch.float16).T)
    return y.float() * scale
