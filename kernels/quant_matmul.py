"""Quantised matrix products: a fused dequantise-GEMV for decode, a dequantiser for prefill.

Every quantised type is one `QuantFormat` over one plane layout, so a single GEMV kernel and a
single dequantise kernel serve them all. A weight row is cut into groups of `G` values that
share a scale (32; 16 for Q6_K and NVFP4):

    value = s * (q - zero) + b            (CODEBOOK: value = s * e2m1(q))

planes, per row of the weight (`PackedWeight`):

* ``q``: int32 words of P = 32 / QBITS fields (QBITS 4: Q4_0, Q4_1, Q4_K, Q6_K's low bits,
  NVFP4; 8: the rest, whose 5- to 8-bit values take a byte each). A *tile* is P groups stored
  as G words: field j of word w of tile t is value (P*t + j)*G + w. Unpacking field j of a
  run of words thus yields a run of consecutive values of one group, so the GEMV reads the
  activations with the same vector width and thread layout as the weight words (no trip
  through shared memory), and one group's scale serves a whole field. A row is padded to whole
  tiles (zero scales).
* ``s``, ``b``: the group scale and offset, fp16 (SCALE/BIAS 1) or the stored integer (2: the
  K-quants, whose scale is that integer times a per-super-block fp16, kept apart so the product
  is the same float32 product ggml's dequantiser forms).
* ``sd``: for the K-quants, [n, T * M] fp16: each tile's multipliers of s and b, M = 2 (d and
  -dmin of its super-block), or of s alone, M = 1 (Q6_K: d; no offset to multiply).
* ``h``: the values' bits above QBITS (HBITS of them: Q6_K's top 2), int32 [n, T / 2 * G]:
  word w of tile pair p holds those of word w of tiles 2p + u (u = 0, 1), field j's at bit
  8 (j / 2) + 4u + 2 (j % 2). So Q6_K is read at 6.63 bits a value (its GGUF blocks: 6.56; a
  byte a value took 8.75), and the tensor-core GEMV finds four fields' high bits a byte apart
  (kquant_imma_gemv.cu).

The GEMV works in float32 without an int-to-float conversion per value: a field becomes the
float f = 1 + q 2^(LOW - 23) by shifting it into the mantissa of 1.0 at bit LOW (one shift, one
logic op; 4-bit fields two per shift), and q x sums to 2^(23 - LOW) (sum f x - sum x)
(`_field_dot`). The torch reference for both kernels is
`dequantize_reference`, itself checked bit for bit against the engine's GGUF dequantiser.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl

from . import mma_gemv
from .mma_gemv import RopeAfter
from .activation import ACTIVATIONS, activate, gated_activation
from .launch import pdl_options, release_dependents, sm_count, tuning_table, wait_inputs

__all__ = ["QuantFormat", "PackedWeight", "FORMATS", "qgemv", "qgemv_gated", "qgemv_rope",
           "rope_epilogues", "RopeAfter", "dequantize", "qmatmul", "dequantize_reference"]


@dataclass(frozen=True)
class QuantFormat:
    name: str
    group: int  # G: values per scale
    qbits: int  # field width in the words: 4 or 8; 32: a dense float32 plane (torch products)
    zero: int = 0
    scale: int = 1  # 0: none; 1: fp16 per group; 2: integer per group x fp16 per super-block
    bias: int = 0  # 0: none; 1: fp16 per group; 2: integer per group x fp16 per super-block
    codebook: bool = False  # NVFP4: q is an E2M1 code
    hbits: int = 0  # bits of a value above qbits, in the plane h

    def __post_init__(self):
        # the GEMV folds each field's power-of-two unit into its group's scale
        assert self.qbits == 32 or self.scale, f"{self.name}: a packed format needs a scale"
        # the one layout of h: four fields of two tiles a byte
        assert self.hbits in (0, 2) and (not self.hbits or self.qbits == 4), self.name

    @property
    def fields(self) -> int:
        return 32 // self.qbits

    @property
    def tile(self) -> int:
        return self.fields * self.group


FORMATS = {f.name: f for f in (
    QuantFormat("float", 32, 32, scale=0),
    QuantFormat("q8_0", 32, 8, zero=128),  # stored as q + 128: every field is unsigned
    QuantFormat("q4_0", 32, 4, zero=8),
    QuantFormat("q4_1", 32, 4, bias=1),
    QuantFormat("q5_0", 32, 8, zero=16),
    QuantFormat("q5_1", 32, 8, bias=1),
    QuantFormat("q4_k", 32, 4, scale=2, bias=2),
    QuantFormat("q5_k", 32, 8, scale=2, bias=2),
    QuantFormat("q6_k", 16, 4, zero=32, scale=2, hbits=2),
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
    s: torch.Tensor | None = None
    b: torch.Tensor | None = None
    sd: torch.Tensor | None = None
    h: torch.Tensor | None = None
    alpha: float = 1.0

    @property
    def tiles(self) -> int:
        return self.q.shape[1] // self.fmt.group

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.planes() if t is not None)

    def planes(self) -> tuple:
        return self.q, self.s, self.b, self.sd, self.h

    def to(self, device) -> "PackedWeight":
        q, s, b, sd, h = (None if t is None else t.to(device) for t in self.planes())
        return replace(self, q=q, s=s, b=b, sd=sd, h=h)


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


def high_shifts(fmt: QuantFormat, device=None) -> torch.Tensor:
    """[2, P] bit offsets in an h word of field j of the pair's tile u (the docstring above)."""
    u = torch.arange(2, device=device).view(2, 1)
    j = torch.arange(fmt.fields, device=device).view(1, -1)
    return 8 * (j // 2) + 4 * u + fmt.hbits * (j % 2)


def high_fields(h: torch.Tensor, n: int, T: int, fmt: QuantFormat) -> torch.Tensor:
    """The h plane as each value's high bits, [n, T, P, G] int32."""
    words = h.view(n, T // 2, 1, 1, fmt.group).to(torch.int64) & 0xFFFFFFFF
    shifts = high_shifts(fmt, h.device).view(1, 1, 2, fmt.fields, 1)
    return ((words >> shifts) & ((1 << fmt.hbits) - 1)).to(torch.int32).view(
        n, T, fmt.fields, fmt.group)


def dequantize_reference(w: PackedWeight) -> torch.Tensor:
    """The weight as float32 [n, k], plain torch, straight from the plane definitions."""
    f, n = w.fmt, w.n
    if f.qbits == 32:
        return w.q.float()
    P, G, T = f.fields, f.group, w.tiles
    shifts = torch.arange(P, device=w.q.device, dtype=torch.int64).view(1, 1, P, 1) * f.qbits
    words = w.q.view(n, T, 1, G).to(torch.int64) & 0xFFFFFFFF
    q = ((words >> shifts) & ((1 << f.qbits) - 1)).to(torch.int32)  # [n, T, P, G]
    if f.hbits:
        q = q | (high_fields(w.h, n, T, f) << f.qbits)
    v = _e2m1_torch(q) if f.codebook else (q - f.zero).float()
    if f.scale:
        s = w.s.view(n, T, P, 1).float()
        if f.scale == 2:
            s = s * w.sd.view(n, T, -1)[:, :, 0].float().view(n, T, 1, 1)
        v = v * s
    if f.bias:
        b = w.b.view(n, T, P, 1).float()
        if f.bias == 2:
            b = b * w.sd.view(n, T, -1)[:, :, 1].float().view(n, T, 1, 1)
        v = v + b
    return v.reshape(n, T * P * G)[:, :w.k] * w.alpha


# --- kernels ----------------------------------------------------------------------------------

@triton.jit
def _e2m1(code):
    mag = code & 7
    e = (mag >> 1).to(tl.float32)
    m = (mag & 1).to(tl.float32)
    val = tl.where(e == 0, m * 0.5, (1.0 + 0.5 * m) * tl.exp2(e - 1.0))
    return tl.where(code >= 8, -val, val)


@triton.jit
def _exact_float(i, mult: tl.constexpr = 1.0, UNSIGNED: tl.constexpr = False):
    """An integer |i| < 2^22 times a power of two `mult`, as float32, without an int-to-float
    conversion (which runs at a quarter of the FMA rate): i added to the bits of 1.5 * 2^23
    lands in the mantissa, and f * mult - 1.5 * 2^23 * mult is exact (one FMA). An i known
    non-negative is or-ed in instead, which joins the logic op that extracted it."""
    bits = (i | 0x4B400000) if UNSIGNED else (i + 0x4B400000)
    return bits.to(tl.float32, bitcast=True) * mult - 12582912.0 * mult


@triton.jit
def _field_int(word, j: tl.constexpr, QBITS: tl.constexpr):
    return (word >> (QBITS * j)) & ((1 << QBITS) - 1)


@triton.jit
def _shifted(word, SHIFT: tl.constexpr):
    if SHIFT >= 0:
        return word << SHIFT
    else:
        return word >> (-SHIFT)


@triton.jit
def _field_dot(word, x, xs, j: tl.constexpr, QBITS: tl.constexpr, ZERO: tl.constexpr,
               one_bits, high, HBITS: tl.constexpr):
    """sum over a thread's values of field j of (q - ZERO) x, in units of 2^(23 - LOW), given
    xs = sum x.

    The field becomes the float f = 1 + q 2^(LOW - 23) by shifting it into the mantissa of 1.0
    at bit LOW (no int-to-float conversion), and sum (q - ZERO) x = UNIT (sum f x - (1 + ZERO /
    UNIT) sum x) with UNIT = 2^(23 - LOW). 4-bit fields go in pairs to bits 15..18 and 19..22,
    so one shift of the word serves two (the lower keeps 2^-19 relative precision in the sums,
    against float32's own 2^-23); a split value (HBITS) joins its high bits from `high` (the h
    word, shifted to this tile's bits) above them. UNIT, a power of two, is left to the caller
    to fold into a scale it multiplies anyway. `one_bits` is 1.0's bit pattern passed as a
    kernel argument: as an immediate beside the immediate mask, (top & mask) | one takes two
    logic instructions instead of one."""
    if HBITS > 0:
        LOW: tl.constexpr = 23 - QBITS - HBITS
    else:
        LOW: tl.constexpr = 15 + 4 * (j % 2) if QBITS == 4 else 23 - QBITS
    MASK: tl.constexpr = ((1 << QBITS) - 1) << LOW
    bits = _shifted(word, LOW - QBITS * j) & MASK
    if HBITS > 0:
        HMASK: tl.constexpr = ((1 << HBITS) - 1) << (LOW + QBITS)
        bits = bits | (_shifted(high, LOW + QBITS - _high_pos(j, HBITS)) & HMASK)
    f = (bits | one_bits).to(tl.float32, bitcast=True)
    UNIT: tl.constexpr = 1 << (23 - LOW)
    return _thread_sum(f * x) - ((UNIT + ZERO) / UNIT) * xs


@triton.jit
def _high_pos(j: tl.constexpr, HBITS: tl.constexpr):
    """Field j's bit in an h word shifted to its tile's bits (quant_matmul's docstring)."""
    return 8 * (j // 2) + HBITS * (j % 2)


@triton.jit
def _load_high(h_ptr, r, t, w, stride_h, G: tl.constexpr, mask, other):
    """The h words of tiles t, each shifted to its tile's bits."""
    words = tl.load(h_ptr + r * stride_h + (t // 2) * G + w, mask=mask, other=other,
                    eviction_policy="evict_first")
    return words >> ((t % 2) * 4)


@triton.jit
def _group_param(ptr, row, t, g: tl.constexpr, P: tl.constexpr, stride, mask,
                 KIND: tl.constexpr, mult: tl.constexpr = 1.0):
    """Parameter g of the P in tile t of a scale or offset plane, as float32: fp16 (KIND 1) or
    an integer (KIND 2), times a power of two `mult`. The plane is read as int32 words, each
    holding whole parameters in order: the parameters of one word share a load (the compiler
    merges the identical loads of neighbouring g) and take a field extraction each, where a
    load each cost an address, a load and a byte permute. A plane whose tiles hold fewer
    parameters than a word (Q6_K's d alone) is read a parameter at a time."""
    BITS: tl.constexpr = ptr.dtype.element_ty.primitive_bitwidth
    EPW: tl.constexpr = 32 // BITS  # parameters per word
    if P % EPW != 0:  # a tile's parameters do not fill whole words (Q6_K's d alone)
        v = tl.load(ptr + row * stride + t * P + g, mask=mask,
                    other=None if mask is None else 0).to(tl.float32) * mult
    else:
        SH: tl.constexpr = BITS * (g % EPW)
        words = ptr.to(tl.pointer_type(tl.int32))
        word = tl.load(words + row * (stride // EPW) + t * (P // EPW) + g // EPW, mask=mask,
                       other=None if mask is None else 0)
        if KIND == 1:
            v = ((word >> SH) & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
            if mult != 1.0:
                v = v * mult
        elif ptr.dtype.element_ty.is_int_signed():
            v = _exact_float((word << (32 - BITS - SH)) >> (32 - BITS), mult)
        else:
            v = _exact_float((word >> SH) & ((1 << BITS) - 1), mult, True)
    return v


@triton.jit
def _thread_sum(v):
    """Sum over the dims each thread holds whole (quarters, elements): no lane crosses."""
    return tl.sum(tl.sum(v, axis=4, keep_dims=True), axis=2, keep_dims=True)


@triton.jit
def _qgemv_kernel(x_ptr, out_ptr, q_ptr, s_ptr, b_ptr, sd_ptr, h_ptr, N, K, T, tiles_per_split,
                  alpha, one_bits, stride_q, stride_s, stride_b, stride_sd, stride_h,
                  G: tl.constexpr, QBITS: tl.constexpr, ZERO: tl.constexpr,
                  CODEBOOK: tl.constexpr, SCALE: tl.constexpr, BIAS: tl.constexpr,
                  HBITS: tl.constexpr,
                  BLOCK_N: tl.constexpr, NT: tl.constexpr, L: tl.constexpr, EVEN: tl.constexpr,
                  ACT: tl.constexpr, PDL: tl.constexpr = False):
    """out[split, n] = alpha * sum_k W[n, k] x[k] over this program's rows and share of tiles.

    ACT > 0 (one split), the gated epilogue that replaces an activation kernel: W is [gate; up],
    a program takes BLOCK_N / 2 rows of each half and writes activate(gate, ACT) * up ([N / 2]).

    Tiles are [L lanes, NT tiles, Q quarters, BLOCK_N rows, 4 words]: lanes and tiles across a
    warp's threads, the rest in each thread's registers. Dims are ordered so the compiler's
    layout gives the weight words and the activations the same one (ties in contiguity go to
    the lower dim), and each thread reuses its activations for all its rows. EVEN: rows, tiles
    and K fill the blocks exactly, so no load is masked (a masked load also costs a predicate
    and the zeroing of its registers).
    """
    P: tl.constexpr = 32 // QBITS
    Q: tl.constexpr = G // (4 * L)
    # the smallest unit a field's dot product comes in (_field_dot: 2^(23 - LOW)); the sums
    # are kept in it, and the even 4-bit fields' 16x larger one folds into their scales
    UNIT_MIN: tl.constexpr = 1 if CODEBOOK else (16 if QBITS == 4 and HBITS == 0
                                                 else 1 << (QBITS + HBITS))
    pid = tl.program_id(0)
    i = tl.arange(0, BLOCK_N)
    if ACT > 0:
        HALF: tl.constexpr = BLOCK_N // 2
        out_rows = pid * HALF + i % HALF
        rows = out_rows + (i // HALF) * (N // 2)
        row_ok = out_rows < N // 2
    else:
        rows = pid * BLOCK_N + i
        row_ok = rows < N
    r = tl.reshape(rows, (1, 1, 1, BLOCK_N, 1))
    r_ok = tl.reshape(row_ok, (1, 1, 1, BLOCK_N, 1))
    lane = tl.arange(0, L)[:, None, None, None, None]
    w = (lane * 4 + tl.arange(0, Q)[None, None, :, None, None] * (4 * L)
         + tl.arange(0, 4)[None, None, None, None, :])
    t_lo = tl.program_id(1) * tiles_per_split
    t_hi = tl.minimum(t_lo + tiles_per_split, T)
    step = tl.arange(0, NT)[None, :, None, None, None]
    wait_inputs(PDL)
    # early: the next kernel's launch and prologue overlap this grid's last programs (8B
    # Q4_K_M decode 346.7 -> 349.4 t/s against a release before the stores)
    release_dependents(PDL)
    other = None if EVEN else 0
    acc = tl.zeros((L, NT, 1, BLOCK_N, 1), tl.float32)
    for t0 in range(t_lo, t_hi, NT):
        t = t0 + step
        wmask = None if EVEN else r_ok & (t < t_hi)
        # weights are read once a token: first out of L2 (8B Q4_K_M decode 319.7 -> 324.6 t/s)
        words = tl.load(q_ptr + r * stride_q + t * G + w, mask=wmask, other=other,
                        eviction_policy="evict_first")
        high = _load_high(h_ptr, r, t, w, stride_h, G, wmask, other) if HBITS > 0 else 0
        # per-(row, tile) parameters, in the layout of the in-thread sums they multiply
        like_sums = _thread_sum(words * 0)
        tp, rp = t + like_sums, r + like_sums
        for j in tl.static_range(P):
            # masked by whole groups (K is a multiple of G), so the loads stay vectors
            xmask = None if EVEN else (t < t_hi) & (t * P + j < K // G)
            x = tl.load(x_ptr + (t * P + j) * G + w, mask=xmask, other=None if EVEN else 0.0)
            xs = _thread_sum(x)
            if CODEBOOK:
                lin = _thread_sum(_e2m1(_field_int(words, j, QBITS)) * x)
            else:
                lin = _field_dot(words, x, xs, j, QBITS, ZERO, one_bits, high, HBITS)
            # this field's unit over UNIT_MIN
            R = 16 if QBITS == 4 and HBITS == 0 and j % 2 == 0 and not CODEBOOK else 1
            lin = lin * _group_param(s_ptr, rp, tp, j, P, stride_s, wmask, SCALE, R)
            if BIAS > 0:
                off = _group_param(b_ptr, rp, tp, j, P, stride_b, wmask, BIAS,
                                   1.0 / UNIT_MIN) * xs
            if j == 0:
                s_acc = lin
                if BIAS > 0:
                    b_acc = off
            else:
                s_acc += lin
                if BIAS > 0:
                    b_acc += off
        if SCALE == 2:  # the tile's multipliers (a K-quant super-block's d and -dmin)
            s_acc = s_acc * _group_param(sd_ptr, rp, tp, 0, 2 if BIAS == 2 else 1, stride_sd,
                                         wmask, 1)
        if BIAS == 2:
            b_acc = b_acc * _group_param(sd_ptr, rp, tp, 1, 2, stride_sd, wmask, 1)
        if BIAS > 0:
            s_acc += b_acc
        acc += s_acc
    total = tl.sum(tl.sum(tl.sum(tl.sum(acc, axis=4), axis=2), axis=1), axis=0) * (UNIT_MIN
                                                                                  * alpha)
    if ACT == 0:
        tl.store(out_ptr + tl.program_id(1) * N + rows, total, mask=row_ok)
    else:
        gate, up = tl.split(tl.permute(tl.reshape(total, (2, HALF)), (1, 0)))
        o = pid * HALF + tl.arange(0, HALF)
        tl.store(out_ptr + o, activate(gate, ACT) * up, mask=o < N // 2)


@triton.jit
def _dequant_kernel(out_ptr, q_ptr, s_ptr, b_ptr, sd_ptr, h_ptr, N, K, T, alpha,
                    stride_q, stride_s, stride_b, stride_sd, stride_h,
                    G: tl.constexpr, QBITS: tl.constexpr, ZERO: tl.constexpr,
                    CODEBOOK: tl.constexpr, SCALE: tl.constexpr, BIAS: tl.constexpr,
                    HBITS: tl.constexpr, BLOCK_N: tl.constexpr, NT: tl.constexpr):
    P: tl.constexpr = 32 // QBITS
    r = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)[:, None, None]
    t = tl.program_id(1) * NT + tl.arange(0, NT)[None, :, None]
    w = tl.arange(0, G)[None, None, :]
    mask = (r < N) & (t < T)
    words = tl.load(q_ptr + r * stride_q + t * G + w, mask=mask, other=0)
    if HBITS > 0:
        high = _load_high(h_ptr, r, t, w, stride_h, G, mask, 0)
    out = out_ptr + r.to(tl.int64) * K
    if SCALE == 2:  # the tile's multipliers, once for all its groups
        ms = _group_param(sd_ptr, r, t, 0, 2 if BIAS == 2 else 1, stride_sd, mask, 1)
    if BIAS == 2:
        mb = _group_param(sd_ptr, r, t, 1, 2, stride_sd, mask, 1)
    for j in tl.static_range(P):
        q = _field_int(words, j, QBITS)
        if HBITS > 0:
            q = q | (_field_int(high >> _high_pos(j, HBITS), 0, HBITS) << QBITS)
        v = _e2m1(q) if CODEBOOK else _exact_float(q - ZERO)
        if SCALE > 0:
            s = _group_param(s_ptr, r, t, j, P, stride_s, mask, SCALE)
            if SCALE == 2:
                s = s * ms
            v = v * s
        if BIAS > 0:
            b = _group_param(b_ptr, r, t, j, P, stride_b, mask, BIAS)
            if BIAS == 2:
                b = b * mb
            v = v + b
        k = (t * P + j) * G + w
        tl.store(out + k, (v * alpha).to(out_ptr.dtype.element_ty), mask=mask & (k < K))


# --- launchers --------------------------------------------------------------------------------

ONE_BITS = 0x3F800000  # 1.0f


def _plane_args(w: PackedWeight) -> tuple[list, list]:
    dummy = w.q  # absent planes are never read (their constexpr switch is off)
    planes = [p if p is not None else dummy for p in w.planes()]
    return planes, [p.stride(0) for p in planes]


def _fmt_args(f: QuantFormat) -> dict:
    return dict(G=f.group, QBITS=f.qbits, ZERO=f.zero, CODEBOOK=f.codebook, SCALE=f.scale,
                BIAS=f.bias, HBITS=f.hbits)


@dataclass(frozen=True)
class GemvConfig:
    block_n: int  # rows per program, all in each thread's registers
    lanes: int  # threads per tile, each holding G / (4 lanes) runs of 4 words of it
    tiles: int  # tiles per loop step; lanes * tiles = 32 * num_warps keeps the sums in-thread
    split_k: int
    num_warps: int


def _default_lanes(fmt: QuantFormat) -> int:
    """Four threads per tile, each holding G / 16 runs of four words (at most one run each)."""
    return min(4, fmt.group // 4)


def gemv_config(w: PackedWeight, n_sm: int) -> GemvConfig:
    """Tiles for a weight: a tuned entry when the tuning table has this (format, n, k), else
    two rows, four lanes per tile, one warp (among the best for every format and shape on the
    H100 sweep), K split while the programs leave SMs short of work."""
    tuned = tuning_table(TUNING_ENV, ".json").get(f"{w.fmt.name} {w.n} {w.k}")
    if tuned:
        return GemvConfig(*tuned)
    block_n, lanes = 2, _default_lanes(w.fmt)
    tiles = 32 // lanes
    programs = triton.cdiv(w.n, block_n)
    split = 1
    while programs * split < 8 * n_sm and w.tiles // (tiles * split * 2) >= 1:
        split *= 2
    return GemvConfig(block_n, lanes, tiles, split, 1)


def _interpreter_config(w: PackedWeight) -> GemvConfig:
    """Off the GPU, Triton's interpreter runs each program as numpy operations, whose cost is
    mostly per call: few programs over large blocks run fastest."""
    lanes = _default_lanes(w.fmt)
    return GemvConfig(64, lanes, max(32 // lanes, triton.next_power_of_2(w.tiles)), 1, 1)


# {"q4_k 14336 4096": [block_n, lanes, tiles, split_k, num_warps], ...}
TUNING_ENV = "IMPDIFF_GEMV_TABLE"


def _launch_gemv(x, w: PackedWeight, cfg: GemvConfig, out, programs: int, per_split: int,
                 splits: int, even: bool, act: int = 0):
    planes, strides = _plane_args(w)
    _qgemv_kernel[(programs, splits)](
        x, out, *planes, w.n, w.k, w.tiles, per_split, w.alpha, ONE_BITS, *strides,
        **_fmt_args(w.fmt), BLOCK_N=cfg.block_n, NT=cfg.tiles, L=cfg.lanes, EVEN=even, ACT=act,
        num_warps=cfg.num_warps, **pdl_options(x.device))


def _config(x: torch.Tensor, w: PackedWeight, config: GemvConfig | None) -> GemvConfig:
    return config or (gemv_config(w, sm_count(x.device)) if x.device.type == "cuda"
                      else _interpreter_config(w))


def _even(w: PackedWeight, cfg: GemvConfig, rows: int, block: int) -> bool:
    """Rows, tiles and K fill the blocks exactly: no load needs a mask."""
    return rows % block == 0 and w.tiles % cfg.tiles == 0 and w.k == w.tiles * w.fmt.tile


def qgemv(x: torch.Tensor, w: PackedWeight, config: GemvConfig | None = None,
          out: torch.Tensor | None = None) -> torch.Tensor:
    """W x for one token: x [k] float32 -> [n] float32.

    Deterministic: a split K writes partial sums that are added in a fixed order.
    """
    if w.fmt.qbits == 32:
        return torch.mv(w.q, x, out=out)
    mma = mma_gemv.choose(x, w) if config is None else None
    if mma:
        return mma_gemv.gemv(x, w, out=out, config=mma)
    cfg = _config(x, w, config)
    per_split = triton.cdiv(triton.cdiv(w.tiles, cfg.split_k), cfg.tiles) * cfg.tiles
    splits = triton.cdiv(w.tiles, per_split)
    partial = torch.empty((splits, w.n), device=x.device, dtype=torch.float32) \
        if splits > 1 or out is None else out.view(1, w.n)
    _launch_gemv(x, w, cfg, partial, triton.cdiv(w.n, cfg.block_n), per_split, splits,
                 _even(w, cfg, w.n, cfg.block_n))
    if splits == 1:
        return partial.view(w.n)
    return torch.sum(partial, dim=0, out=out)


def qgemv_gated(x: torch.Tensor, w: PackedWeight, act: str,
                config: GemvConfig | None = None) -> torch.Tensor:
    """act(gate) * up for one token from the fused weight [gate; up]: x [k] -> [n / 2], the
    activation in the GEMV's epilogue (one split; rows in pairs, one of each half)."""
    half = w.n // 2
    if w.fmt.qbits == 32:
        y = qgemv(x, w)
        return gated_activation(act, y[None, :half], y[None, half:])[0]
    mma = mma_gemv.choose(x, w, act) if config is None else None
    if mma:
        return mma_gemv.gemv(x, w, act=act, config=mma)
    cfg = _config(x, w, config)
    cfg = replace(cfg, split_k=1, block_n=max(cfg.block_n, 2))
    out = torch.empty(half, device=x.device, dtype=torch.float32)
    _launch_gemv(x, w, cfg, out, triton.cdiv(half, cfg.block_n // 2), w.tiles, 1,
                 _even(w, cfg, half, cfg.block_n // 2), act=ACTIVATIONS[act])
    return out


def rope_epilogues(x: torch.Tensor, weights: list[PackedWeight],
                   rope: RopeAfter) -> list[RopeAfter] | None:
    """Each weight's `rope` (its first row in [Q; K; V]) for a one-token QKV projection over
    `weights` in order, where every product runs on the i8 tensor-core GEMV and can end by
    rotating and storing its rows (`qgemv_rope`); else None."""
    parts, row0 = [], 0
    for w in weights:
        part = replace(rope, row0=row0)
        cfg = mma_gemv.choose(x, w)
        if cfg is None or not mma_gemv.takes_rope(cfg, w, part):
            return None
        parts.append(part)
        row0 += w.n
    return parts


def qgemv_rope(x: torch.Tensor, w: PackedWeight, rope: RopeAfter) -> None:
    """W x for one token, its Q and K rows rotated and stored, V's stored (`rope_epilogues`)."""
    mma_gemv.gemv_rope(x, w, mma_gemv.choose(x, w), rope)


def dequantize(w: PackedWeight, dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """The weight as a dense [n, k] tensor of `dtype` (kernel twin of `dequantize_reference`)."""
    if w.fmt.qbits == 32:
        return w.q.to(dtype)
    out = torch.empty((w.n, w.k), device=w.q.device, dtype=dtype)
    # the interpreter (off the GPU) prefers few large programs, as in _interpreter_config
    block_n, tiles = (16, 4) if w.q.is_cuda else (64, triton.next_power_of_2(w.tiles))
    grid = (triton.cdiv(w.n, block_n), triton.cdiv(w.tiles, tiles))
    planes, strides = _plane_args(w)
    _dequant_kernel[grid](out, *planes, w.n, w.k, w.tiles, w.alpha, *strides, **_fmt_args(w.fmt),
                          BLOCK_N=block_n, NT=tiles, num_warps=4)
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
    if w.fmt.qbits == 32:
        return x @ w.q.T
    scale = _pow2_row_scale(x)
    y = torch.matmul((x / scale).to(torch.float16), dequantize(w, torch.float16).T)
    return y.float() * scale
