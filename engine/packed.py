"""GGUF tensors (and NVFP4 checkpoints) into the plane layout of the fast kernels.

`impdiff.kernels.quant_matmul` defines the layout; this module only reads ggml's blocks, using
the same field readers as the reference dequantiser (`quants`), and regroups their integers.
Nothing is rounded: each plane holds the stored integers or fp16 scales unchanged, so the fast
path multiplies the same numbers the reference does.
"""

from __future__ import annotations

import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from ..kernels.quant_matmul import FORMATS, PackedWeight
from .errors import ModelLoadError
from .quants import (_as_bytes, _bits_le, _fields, _k_nibbles, _k_scale_min, _nibbles,
                     _unpack, type_name)

T = GGMLQuantizationType


def _f16(field: torch.Tensor, rows: int) -> torch.Tensor:
    return field.contiguous().view(torch.float16).reshape(rows, -1)


def nibble_plane(q: torch.Tensor) -> torch.Tensor:
    """Integers [rows, k] -> bytes [rows, k/2]: byte c = (value 2c & 15) | (value 2c+1 & 15) << 4."""
    pairs = q.reshape(q.shape[0], -1, 2).to(torch.uint8)
    return (pairs[..., 0] & 15) | ((pairs[..., 1] & 15) << 4)


def high_plane(q: torch.Tensor, group: int, extra: int) -> torch.Tensor:
    """The bits of q above the low four, `extra` per value, packed per group in one int32."""
    rows = q.shape[0]
    top = (q.reshape(rows, -1, group).to(torch.int64) >> 4) & ((1 << extra) - 1)
    shifts = torch.arange(group, device=q.device, dtype=torch.int64) * extra
    word = (top << shifts).sum(-1)
    return torch.where(word >= 2 ** 31, word - 2 ** 32, word).to(torch.int32)


def pack_gguf(raw, qtype: int, shape: tuple[int, ...], device) -> PackedWeight:
    """One 2-D GGUF tensor ([n, k], torch order) as a PackedWeight on `device`."""
    n, k = (int(s) for s in shape)
    qt = T(int(qtype))
    data = _as_bytes(raw).to(device)
    if qt in (T.F32, T.F16, T.BF16):
        dtype = {T.F32: torch.float32, T.F16: torch.float16, T.BF16: torch.bfloat16}[qt]
        return PackedWeight(FORMATS["float"], n, k, data.view(dtype).reshape(n, k))
    if qt not in _PACKERS:
        raise ModelLoadError(f"the fast path has no kernel for {type_name(qtype)} (it runs "
                             f"{', '.join(t.name for t in (T.F32, T.F16, T.BF16, *_PACKERS))})")
    blocks = data.view(-1, GGML_QUANT_SIZES[qt][1])
    return _PACKERS[qt](blocks, n, k)


def _q8_0(blocks, n, k):
    d, qs = _fields(blocks, T.Q8_0)
    # the int8 values + 128 as unsigned bytes: every plane holds non-negative integers
    return PackedWeight(FORMATS["q8_0"], n, k, (qs.contiguous() ^ 0x80).reshape(n, k),
                        s=_f16(d, n))


def _q4_01(blocks, n, k, qt):
    fields = _fields(blocks, qt)
    d, qs = fields[0], fields[-1]
    m = _f16(fields[1], n) if qt == T.Q4_1 else None
    q = _nibbles(qs).reshape(n, k)  # ggml pairs value j with j + 16; the plane pairs 2c, 2c+1
    return PackedWeight(FORMATS[qt.name.lower()], n, k, nibble_plane(q), s=_f16(d, n), b=m)


def _q5_01(blocks, n, k, qt):
    fields = _fields(blocks, qt)
    d, qh, qs = fields[0], fields[-2], fields[-1]
    m = _f16(fields[1], n) if qt == T.Q5_1 else None
    q = (_nibbles(qs) | (_bits_le(qh.contiguous()) << 4)).reshape(n, k)
    return PackedWeight(FORMATS[qt.name.lower()], n, k, nibble_plane(q),
                        qh=high_plane(q, 32, 1), s=_f16(d, n), b=m)


def _k_quant(blocks, n, k, qt):
    fields = _fields(blocks, qt)
    d, dmin, scales = fields[0], fields[1], fields[2]
    q = _k_nibbles(fields[-1])
    if qt == T.Q5_K:
        q = q | (_unpack(fields[3], 1) << 4)
    q = q.reshape(n, k)
    sc, mn = _k_scale_min(scales)
    fmt = FORMATS[qt.name.lower()]
    return PackedWeight(fmt, n, k, nibble_plane(q),
                        qh=high_plane(q, 32, 1) if fmt.extra else None,
                        s=sc.reshape(n, -1).contiguous(), sd=_f16(d, n),
                        b=mn.reshape(n, -1).contiguous(), bd=-_f16(dmin, n))


def _q6_k(blocks, n, k):
    ql, qh, scales, d = _fields(blocks, T.Q6_K)
    nb = blocks.shape[0]
    low = _unpack(ql.reshape(nb, 2, 64), 4).reshape(nb, 8, 32)
    high = _unpack(qh.reshape(nb, 2, 32), 2).reshape(nb, 8, 32)
    q = (low | (high << 4)).reshape(n, k)
    return PackedWeight(FORMATS["q6_k"], n, k, nibble_plane(q), qh=high_plane(q, 16, 2),
                        s=scales.contiguous().view(torch.int8).reshape(n, -1), sd=_f16(d, n))


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
    # the HF packing is the plane layout; fp8 e4m3 -> fp16 is exact (NaN block scales were
    # zeroed by the loader's guards)
    return PackedWeight(FORMATS["nvfp4"], n, k, codes.contiguous(),
                        s=block_scale.to(torch.float16).reshape(n, -1), alpha=float(multiplier))
