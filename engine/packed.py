"""GGUF tensors (and NVFP4 checkpoints) into the plane layout of the fast kernels.

`impdiff.kernels.quant_matmul` defines the layout; this module only reads ggml's blocks, using
the same field readers as the reference dequantiser (`quants`), and regroups their integers.
Nothing is rounded: the planes hold the stored integers and fp16 scales unchanged, so the fast
path multiplies the same numbers the reference does.
"""

from __future__ import annotations

import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from ..kernels.quant_matmul import FORMATS, SUPER_BLOCK, PackedWeight, QuantFormat, high_shifts
from .errors import ModelLoadError
from .quants import (_as_bytes, _bits_le, _fields, _k_nibbles, _k_scale_min, _nibbles,
                     _unpack, type_name)

T = GGMLQuantizationType


def _padded(values: torch.Tensor, width: int) -> torch.Tensor:
    """Integers [n, k] as int64 [n, width], zeros past k."""
    out = torch.zeros(values.shape[0], width, dtype=torch.int64, device=values.device)
    out[:, :values.shape[1]] = values.to(torch.int64)
    return out


def _int32(words: torch.Tensor) -> torch.Tensor:
    """Unsigned 32-bit words held in int64 -> int32 of the same bits."""
    return torch.where(words >= 2 ** 31, words - 2 ** 32, words).to(torch.int32)


def word_plane(q: torch.Tensor, fmt: QuantFormat) -> torch.Tensor:
    """Unsigned integers [n, k] -> int32 words [n, T*G]: field j of word w of tile t holds value
    (P*t + j)*G + w; a row's last tile is padded with zeros."""
    n, P, G = q.shape[0], fmt.fields, fmt.group
    tiles = -(-q.shape[1] // fmt.tile)
    shifts = torch.arange(P, device=q.device, dtype=torch.int64).view(1, 1, P, 1) * fmt.qbits
    words = _padded(q, tiles * fmt.tile).view(n, tiles, P, G) << shifts
    return _int32(words.sum(dim=2).view(n, tiles * G))


def high_plane(high: torch.Tensor, fmt: QuantFormat) -> torch.Tensor:
    """Each value's bits above fmt.qbits [n, k] -> the int32 plane h [n, T / 2 * G] (its layout:
    quant_matmul's docstring)."""
    n, P, G = high.shape[0], fmt.fields, fmt.group
    pairs = -(-high.shape[1] // (2 * fmt.tile))
    shifts = high_shifts(fmt, high.device).view(1, 1, 2, P, 1)
    words = _padded(high, pairs * 2 * fmt.tile).view(n, pairs, 2, P, G) << shifts
    return _int32(words.sum(dim=(2, 3)).view(n, pairs * G))


def group_plane(p: torch.Tensor, fmt: QuantFormat, k: int) -> torch.Tensor:
    """A per-group scale or offset [n, groups], padded to whole tiles with zeros."""
    n, groups = p.shape[0], -(-k // fmt.tile) * fmt.fields
    out = torch.zeros(n, groups, dtype=p.dtype, device=p.device)
    out[:, :p.shape[1]] = p
    return out


def tile_multipliers(d: torch.Tensor, neg_dmin: torch.Tensor | None, fmt: QuantFormat
                     ) -> torch.Tensor:
    """Per-super-block fp16 d (and -dmin) [n, supers] -> [n, T] (or [n, 2T]: each tile's pair)."""
    per_super = SUPER_BLOCK // fmt.tile
    per_tile = d if neg_dmin is None else torch.stack([d, neg_dmin], dim=-1)
    return per_tile.repeat_interleave(per_super, dim=1).reshape(d.shape[0], -1).contiguous()


def _f16(field: torch.Tensor, rows: int) -> torch.Tensor:
    return field.contiguous().view(torch.float16).reshape(rows, -1)


def _packed(name: str, n: int, k: int, q: torch.Tensor, s=None, b=None, d=None, neg_dmin=None,
            alpha: float = 1.0) -> PackedWeight:
    fmt = FORMATS[name]
    q = q.reshape(n, k)
    low = q & ((1 << fmt.qbits) - 1) if fmt.hbits else q
    return PackedWeight(fmt, n, k, word_plane(low, fmt),
                        s=None if s is None else group_plane(s.reshape(n, -1), fmt, k),
                        b=None if b is None else group_plane(b.reshape(n, -1), fmt, k),
                        sd=None if d is None else tile_multipliers(d, neg_dmin, fmt),
                        h=high_plane(q >> fmt.qbits, fmt) if fmt.hbits else None,
                        alpha=alpha)


def pack_gguf(raw, qtype: int, shape: tuple[int, ...], device) -> PackedWeight:
    """One 2-D GGUF tensor ([n, k], torch order) as a PackedWeight on `device`."""
    n, k = (int(s) for s in shape)
    qt = T(int(qtype))
    data = _as_bytes(raw).to(device)
    if qt in (T.F32, T.F16, T.BF16):
        dtype = {T.F32: torch.float32, T.F16: torch.float16, T.BF16: torch.bfloat16}[qt]
        return PackedWeight(FORMATS["float"], n, k, data.view(dtype).reshape(n, k).float())
    if qt not in _PACKERS:
        raise ModelLoadError(f"the fast path has no kernel for {type_name(qtype)} (it runs "
                             f"{', '.join(t.name for t in (T.F32, T.F16, T.BF16, *_PACKERS))})")
    blocks = data.view(-1, GGML_QUANT_SIZES[qt][1])
    return _PACKERS[qt](blocks, n, k)


def _q8_0(blocks, n, k):
    d, qs = _fields(blocks, T.Q8_0)
    # the int8 values + 128 as unsigned bytes: every field holds a non-negative integer
    return _packed("q8_0", n, k, qs.contiguous() ^ 0x80, s=_f16(d, n))


def _q4_01(blocks, n, k, qt):
    fields = _fields(blocks, qt)
    m = _f16(fields[1], n) if qt == T.Q4_1 else None
    return _packed(qt.name.lower(), n, k, _nibbles(fields[-1]), s=_f16(fields[0], n), b=m)


def _q5_01(blocks, n, k, qt):
    fields = _fields(blocks, qt)
    d, qh, qs = fields[0], fields[-2], fields[-1]
    m = _f16(fields[1], n) if qt == T.Q5_1 else None
    return _packed(qt.name.lower(), n, k, _nibbles(qs) | (_bits_le(qh.contiguous()) << 4),
                   s=_f16(d, n), b=m)


def _k_quant(blocks, n, k, qt):
    fields = _fields(blocks, qt)
    d, dmin, scales = fields[0], fields[1], fields[2]
    q = _k_nibbles(fields[-1])
    if qt == T.Q5_K:
        q = q | (_unpack(fields[3], 1) << 4)
    sc, mn = _k_scale_min(scales)
    return _packed(qt.name.lower(), n, k, q, s=sc, b=mn, d=_f16(d, n), neg_dmin=-_f16(dmin, n))


def _q6_k(blocks, n, k):
    ql, qh, scales, d = _fields(blocks, T.Q6_K)
    nb = blocks.shape[0]
    low = _unpack(ql.reshape(nb, 2, 64), 4).reshape(nb, 8, 32)
    high = _unpack(qh.reshape(nb, 2, 32), 2).reshape(nb, 8, 32)
    return _packed("q6_k", n, k, low | (high << 4), s=scales.contiguous().view(torch.int8),
                   d=_f16(d, n))


_PACKERS = {
    T.Q8_0: _q8_0,
    T.Q4_0: lambda b, n, k: _q4_01(b, n, k, T.Q4_0),
    T.Q4_1: lambda b, n, k: _q4_01(b, n, k, T.Q4_1),
    T.Q5_0: lambda b, n, k: _q5_01(b, n, k, T.Q5_0),
    T.Q5_1: lambda b, n, k: _q5_01(b, n, k, T.Q5_1),
    T.Q4_K: lambda b, n, k: _k_quant(b, n, k, T.Q4_K),
    T.Q5_K: lambda b, n, k: _k_quant(b, n, k, T.Q5_K),
    T.Q6_K: _q6_k,
}
PACKED_TYPES = (T.F32, T.F16, T.BF16, *_PACKERS)


def pack_nvfp4(codes: torch.Tensor, block_scale: torch.Tensor, multiplier: float) -> PackedWeight:
    """An NVFP4 weight in the HF layout (codes [n, k/2], even value in the low nibble; FP8 E4M3
    scales [n, k/16]; the tensor multiplier of `nvfp4.tensor_multiplier`)."""
    n, k = codes.shape[0], codes.shape[1] * 2
    q = torch.stack([codes & 15, codes >> 4], dim=-1).reshape(n, k)
    # fp8 e4m3 -> fp16 is exact (NaN block scales were zeroed by the loader's guards)
    return _packed("nvfp4", n, k, q, s=block_scale.to(torch.float16), alpha=float(multiplier))
