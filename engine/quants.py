"""Dequantising GGUF tensor data to float32 torch tensors.

Each supported ggml type has one small pure function that turns a `(n_blocks, type_size)` uint8
tensor into `(n_blocks, block_size)` float32. Everything is whole-tensor torch ops, so the same
code runs on CPU and CUDA, and there is no Python loop over blocks.

The arithmetic follows ggml's reference dequantisers (and gguf's numpy port in `gguf/quants.py`,
which the tests compare against bit for bit): scales are converted to float32 first and the
products and sums are done in the same order, so float32 rounding matches too.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, QK_K, GGMLQuantizationType

from .errors import ModelLoadError

__all__ = ["SUPPORTED_TYPES", "dequantize", "type_name"]

T = GGMLQuantizationType

# Byte widths of the fields of one block, in storage order (ggml's block_* structs). Block and
# type sizes come from gguf; these only say how a block is cut up, and the check below ties the
# two together so a layout typo fails at import rather than as garbage weights.
_K_SCALE_SIZE = 12  # ggml's K_SCALE_SIZE: 8 six-bit scales + 8 six-bit mins
_LAYOUT: dict[GGMLQuantizationType, tuple[int, ...]] = {
    T.F32: (4,),
    T.F16: (2,),
    T.BF16: (2,),
    T.Q8_0: (2, GGML_QUANT_SIZES[T.Q8_0][0]),  # d, qs
    T.Q4_0: (2, GGML_QUANT_SIZES[T.Q4_0][0] // 2),  # d, qs
    T.Q4_1: (2, 2, GGML_QUANT_SIZES[T.Q4_1][0] // 2),  # d, m, qs
    T.Q5_0: (2, 4, GGML_QUANT_SIZES[T.Q5_0][0] // 2),  # d, qh, qs
    T.Q5_1: (2, 2, 4, GGML_QUANT_SIZES[T.Q5_1][0] // 2),  # d, m, qh, qs
    T.Q2_K: (QK_K // 16, QK_K // 4, 2, 2),  # scales, qs, d, dmin
    T.Q3_K: (QK_K // 8, QK_K // 4, 12, 2),  # hmask, qs, scales, d
    T.Q4_K: (2, 2, _K_SCALE_SIZE, QK_K // 2),  # d, dmin, scales, qs
    T.Q5_K: (2, 2, _K_SCALE_SIZE, QK_K // 8, QK_K // 2),  # d, dmin, scales, qh, qs
    T.Q6_K: (QK_K // 2, QK_K // 4, QK_K // 16, 2),  # ql, qh, scales, d
}
for _t, _widths in _LAYOUT.items():
    assert sum(_widths) == GGML_QUANT_SIZES[_t][1], f"{_t.name} layout disagrees with gguf"


def _fields(blocks: torch.Tensor, qtype: GGMLQuantizationType) -> tuple[torch.Tensor, ...]:
    return torch.split(blocks, _LAYOUT[qtype], dim=1)


def _f16(field: torch.Tensor) -> torch.Tensor:
    """A 2-byte fp16 field of each block as a `(n_blocks, 1)` float32 column."""
    # contiguous(): a field sliced out of a block may sit at an odd byte offset, which view(dtype)
    # refuses; the copy is 2 bytes a block.
    return field.contiguous().view(torch.float16).to(torch.float32)


def _unpack(x: torch.Tensor, width: int) -> torch.Tensor:
    """Split each byte into 8/width fields of `width` bits, lowest first, as a new dim at -2.

    ggml packs low bits of a byte for the first run of values and higher bits for later runs, so
    the planes land on dim -2 and a reshape restores value order.
    """
    shifts = torch.arange(0, 8, width, dtype=torch.uint8, device=x.device).view(-1, 1)
    return (x.unsqueeze(-2) >> shifts) & ((1 << width) - 1)


def _bits_le(x: torch.Tensor) -> torch.Tensor:
    """Bit i of a little-endian bitfield of `(n, k)` bytes at index i of `(n, 8k)`."""
    # Q5_0/Q5_1's qh is a uint32 at an offset not aligned to 4, so read it byte by byte.
    return _unpack(x, 1).transpose(-1, -2).reshape(x.shape[0], -1)


# --- float types: a block is one value ------------------------------------------------------


def _f32(blocks: torch.Tensor) -> torch.Tensor:
    return blocks.view(torch.float32)


def _f16_values(blocks: torch.Tensor) -> torch.Tensor:
    return blocks.view(torch.float16).to(torch.float32)


def _bf16(blocks: torch.Tensor) -> torch.Tensor:
    return blocks.view(torch.bfloat16).to(torch.float32)


# --- 32-value blocks ------------------------------------------------------------------------


def _q8_0(blocks: torch.Tensor) -> torch.Tensor:
    d, qs = _fields(blocks, T.Q8_0)
    return qs.view(torch.int8).to(torch.float32) * _f16(d)


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    # Low nibbles hold values 0..15 of the block, high nibbles 16..31.
    return _unpack(qs, 4).reshape(qs.shape[0], -1)


def _q4_0(blocks: torch.Tensor) -> torch.Tensor:
    d, qs = _fields(blocks, T.Q4_0)
    q = _nibbles(qs).to(torch.int8) - 8
    return _f16(d) * q.to(torch.float32)


def _q4_1(blocks: torch.Tensor) -> torch.Tensor:
    d, m, qs = _fields(blocks, T.Q4_1)
    return _f16(d) * _nibbles(qs).to(torch.float32) + _f16(m)


def _q5_0(blocks: torch.Tensor) -> torch.Tensor:
    d, qh, qs = _fields(blocks, T.Q5_0)
    q = (_nibbles(qs) | (_bits_le(qh) << 4)).to(torch.int8) - 16
    return _f16(d) * q.to(torch.float32)


def _q5_1(blocks: torch.Tensor) -> torch.Tensor:
    d, m, qh, qs = _fields(blocks, T.Q5_1)
    q = _nibbles(qs) | (_bits_le(qh) << 4)
    return _f16(d) * q.to(torch.float32) + _f16(m)


# --- K-quants: 256-value super-blocks of 16 or 8 sub-blocks -------------------------------------
# Products are done in place on the (large) value tensor to keep peak memory near one float32
# copy of the output; multiplication is commutative in IEEE, so the rounding is unchanged.


def _q2_k(blocks: torch.Tensor) -> torch.Tensor:
    scales, qs, d, dmin = _fields(blocks, T.Q2_K)
    n = blocks.shape[0]
    # Each scale byte is a 4-bit scale (low) and 4-bit min (high) for one 16-value sub-block.
    dl = (_f16(d) * (scales & 0xF).to(torch.float32)).unsqueeze(-1)
    ml = (_f16(dmin) * (scales >> 4).to(torch.float32)).unsqueeze(-1)
    # 2-bit values: two 128-value halves, each 32 bytes read four times at shifts 0, 2, 4, 6.
    q = _unpack(qs.reshape(n, 2, 32), 2).reshape(n, 16, 16).to(torch.float32)
    return q.mul_(dl).sub_(ml).reshape(n, QK_K)


def _q3_k_scales(scales: torch.Tensor) -> torch.Tensor:
    """The 16 signed 6-bit scales of a Q3_K block, as ggml's dequantize_row_q3_K unpacks them.

    Bytes 0-7 hold the low nibbles (scales 0-7 in the low halves, 8-15 in the high halves);
    bytes 8-11 hold the top 2 bits, scale 4*s + j at bits 2s of byte 8 + j. Stored with +32 bias.
    """
    n = scales.shape[0]
    low = _unpack(scales[:, :8], 4).reshape(n, 16)
    high = _unpack(scales[:, 8:], 2).reshape(n, 16)
    return (low | (high << 4)).to(torch.int8) - 32


def _q3_k(blocks: torch.Tensor) -> torch.Tensor:
    hmask, qs, scales, d = _fields(blocks, T.Q3_K)
    n = blocks.shape[0]
    dl = (_f16(d) * _q3_k_scales(scales).to(torch.float32)).unsqueeze(-1)
    low = _unpack(qs.reshape(n, 2, 32), 2).reshape(n, 16, 16)
    high = _unpack(hmask, 1).reshape(n, 16, 16)
    # ggml subtracts 4 when the hmask bit is *clear*: values are low - 4 * (1 - bit), in -4..3.
    q = (low.to(torch.int8) - ((high ^ 1) << 2).to(torch.int8)).to(torch.float32)
    return q.mul_(dl).reshape(n, QK_K)


def _k_scale_min(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 8 six-bit scales and 8 six-bit mins of a Q4_K/Q5_K block (ggml's get_scale_min_k4).

    Sub-blocks 0-3 keep scale and min in the low 6 bits of bytes 0-3 and 4-7. Sub-blocks 4-7
    take their low 4 bits from the nibbles of bytes 8-11 (scale low, min high) and their top 2
    bits from the spare top bits of bytes 0-3 (scales) and 4-7 (mins).
    """
    sc, mn, lo = scales[:, 0:4], scales[:, 4:8], scales[:, 8:12]
    scale = torch.cat([sc & 0x3F, (lo & 0x0F) | ((sc >> 2) & 0x30)], dim=-1)
    min_ = torch.cat([mn & 0x3F, (lo >> 4) | ((mn >> 2) & 0x30)], dim=-1)
    return scale, min_


def _k_affine(q: torch.Tensor, d: torch.Tensor, dmin: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Q4_K/Q5_K: value = d * scale * q - dmin * min, per 32-value sub-block."""
    n = q.shape[0]
    scale, min_ = _k_scale_min(scales)
    dl = (_f16(d) * scale.to(torch.float32)).unsqueeze(-1)
    ml = (_f16(dmin) * min_.to(torch.float32)).unsqueeze(-1)
    return q.to(torch.float32).mul_(dl).sub_(ml).reshape(n, QK_K)


def _k_nibbles(qs: torch.Tensor) -> torch.Tensor:
    # Four 64-value chunks, each 32 bytes: low nibbles first, then high nibbles.
    n = qs.shape[0]
    return _unpack(qs.reshape(n, 4, 32), 4).reshape(n, 8, 32)


def _q4_k(blocks: torch.Tensor) -> torch.Tensor:
    d, dmin, scales, qs = _fields(blocks, T.Q4_K)
    return _k_affine(_k_nibbles(qs), d, dmin, scales)


def _q5_k(blocks: torch.Tensor) -> torch.Tensor:
    d, dmin, scales, qh, qs = _fields(blocks, T.Q5_K)
    # Sub-block i takes its fifth bit from bit i of the 32 qh bytes.
    q = _k_nibbles(qs) | (_unpack(qh, 1) << 4)
    return _k_affine(q, d, dmin, scales)


def _q6_k(blocks: torch.Tensor) -> torch.Tensor:
    ql, qh, scales, d = _fields(blocks, T.Q6_K)
    n = blocks.shape[0]
    dl = (_f16(d) * scales.view(torch.int8).to(torch.float32)).unsqueeze(-1)
    # Two 128-value halves: 64 ql bytes (low nibbles, then high) and 32 qh bytes read at shifts
    # 0, 2, 4, 6 give the low 4 and high 2 bits of the same 128 values in the same order.
    low = _unpack(ql.reshape(n, 2, 64), 4).reshape(n, 8, 32)
    high = _unpack(qh.reshape(n, 2, 32), 2).reshape(n, 8, 32)
    q = ((low | (high << 4)).to(torch.int8) - 32).reshape(n, 16, 16).to(torch.float32)
    return q.mul_(dl).reshape(n, QK_K)


_DEQUANT: dict[GGMLQuantizationType, Callable[[torch.Tensor], torch.Tensor]] = {
    T.F32: _f32,
    T.F16: _f16_values,
    T.BF16: _bf16,
    T.Q8_0: _q8_0,
    T.Q4_0: _q4_0,
    T.Q4_1: _q4_1,
    T.Q5_0: _q5_0,
    T.Q5_1: _q5_1,
    T.Q2_K: _q2_k,
    T.Q3_K: _q3_k,
    T.Q4_K: _q4_k,
    T.Q5_K: _q5_k,
    T.Q6_K: _q6_k,
}

SUPPORTED_TYPES: tuple[GGMLQuantizationType, ...] = tuple(_DEQUANT)


def type_name(qtype: int) -> str:
    """The ggml name of a type id (`Q4_K`), or `type <id>` for an id gguf does not know."""
    try:
        return GGMLQuantizationType(int(qtype)).name
    except ValueError:
        return f"type {int(qtype)}"


def _as_bytes(raw: torch.Tensor | np.ndarray) -> torch.Tensor:
    """The stored bytes as a flat uint8 tensor, on raw's device."""
    if isinstance(raw, np.ndarray):
        arr = np.ascontiguousarray(raw)
        # gguf hands read-only memmaps; torch.from_numpy warns on those (torch may write through
        # the alias), so take one private copy of this tensor's bytes.
        if not arr.flags.writeable:
            arr = arr.copy()
        return torch.from_numpy(arr.reshape(-1).view(np.uint8))
    if isinstance(raw, torch.Tensor):
        return raw.contiguous().reshape(-1).view(torch.uint8)
    raise TypeError(f"dequantize: raw must be a torch.Tensor or numpy.ndarray, not {type(raw).__name__}")


def dequantize(raw: torch.Tensor | np.ndarray, qtype: int, shape: Sequence[int]) -> torch.Tensor:
    """Dequantise one GGUF tensor's stored bytes to float32 of `shape` (torch order).

    `raw` is the tensor's data as stored (uint8 bytes, or a typed float16/float32/uint16 view of
    them for float types). The result is on raw's device; for F32 it may share raw's memory.
    Raises ModelLoadError for an unsupported type or a byte count that does not fit `shape`.
    """
    try:
        qt = GGMLQuantizationType(int(qtype))
    except ValueError:
        qt = None
    fn = _DEQUANT.get(qt)  # type: ignore[arg-type]
    if fn is None:
        supported = ", ".join(t.name for t in SUPPORTED_TYPES)
        raise ModelLoadError(f"tensor type {type_name(qtype)} is not supported (supported: {supported})")
    assert qt is not None

    shape = tuple(int(s) for s in shape)
    block_size, type_size = GGML_QUANT_SIZES[qt]
    row = shape[-1] if shape else 1
    if row % block_size:
        raise ModelLoadError(
            f"{qt.name} tensor of shape {list(shape)}: row length {row} is not a multiple of the block size {block_size}"
        )
    data = _as_bytes(raw)
    expected = math.prod(shape) // block_size * type_size
    if data.numel() != expected:
        raise ModelLoadError(f"{qt.name} tensor of shape {list(shape)} needs {expected} bytes, got {data.numel()}")
    blocks = data.view(-1, type_size)
    return fn(blocks).reshape(shape)
