"""NVFP4 weights: one number format, two on-disk layouts.

NVFP4 stores a weight matrix ``W [out, in]`` as 4-bit E2M1 codes with two levels of scale:

* **codes**: two per byte, the *low* nibble holds the even element (``in`` index 2j), the high
  nibble the odd one (2j + 1). A code is ``s eem``: sign bit 3, exponent bits 2-1 (bias 1),
  mantissa bit 0. Exponent 0 is subnormal (``m * 0.5``), otherwise ``(1 + m/2) * 2^(e-1)``,
  so the magnitudes are 0, 0.5, 1, 1.5, 2, 3, 4, 6.
* **block scale**: one FP8 E4M3 (``float8_e4m3fn``: sign, 4 exponent bits of bias 7, 3 mantissa
  bits, no infinities, ``S.1111.111`` is NaN, max 448) per 16 consecutive elements of a row,
  shape ``[out, in / 16]``.
* **tensor scale**: one float32 per weight. The two layouts disagree on its direction:

  ============================== ======================= ====================================
  layout                         tensor names            value
  ============================== ======================= ====================================
  compressed-tensors             ``weight_packed``       ``code * weight_scale /
  (llm-compressor,               ``weight_scale``        weight_global_scale``
  ``nvfp4-pack-quantized``)      ``weight_global_scale`` (the global scale is a *divisor*)
                                 ``input_global_scale``
  NVIDIA ModelOpt                ``weight`` (uint8)      ``code * weight_scale *
  (``hf_quant_config.json``,     ``weight_scale``        weight_scale_2``
  ``quant_algo: NVFP4``)         ``weight_scale_2``      (a *multiplier*)
                                 ``input_scale``
  ============================== ======================= ====================================

The engine is a float32 reference, so NVFP4 weights are dequantised at load time (W4A16): the
activation scales (``input_scale`` / ``input_global_scale``) are loaded, checked and reported as
unused.

Guards (each one is an event the loader counts and reports; see `safetensors_loader.LoadStats`):

* a tensor scale that is zero or not finite becomes 0 (the weight is zeroed) with a warning naming
  the tensor; for compressed-tensors a finite divisor whose reciprocal overflows is treated alike.
  Inf or NaN never reaches a matmul.
* a block scale that is NaN (FP8 code 0x7F / 0xFF) zeroes its 16 elements, with a warning;
  a negative block scale is kept (it is what the format says) but reported.
* the block-scale dtype must be FP8 E4M3, the codes uint8, and the shapes must agree with a group
  size of 16 (`check_shapes`); anything else is a `ModelLoadError`.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .errors import ModelLoadError

GROUP_SIZE = 16
_F32_MAX = 3.4028234663852886e38
FP4_MAX = 6.0
FP8_E4M3_MAX = 448.0
LAYOUTS = ("compressed-tensors", "modelopt")

# E2M1 code -> value, codes 0..15 (bit 3 is the sign)
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
               -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
_E2M1 = torch.tensor(E2M1_VALUES, dtype=torch.float32)
# byte -> (value of the low nibble, value of the high nibble): one gather decodes a byte
_PAIRS = torch.stack([_E2M1[torch.arange(256) & 0x0F], _E2M1[torch.arange(256) >> 4]], -1)
# midpoints between the magnitudes 0, .5, 1, 1.5, 2, 3, 4, 6
_E2M1_BOUNDS = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0], dtype=torch.float32)

# names of the per-weight tensors of each layout, relative to the module prefix
TENSOR_NAMES = {
    "compressed-tensors": {"packed": "weight_packed", "scale": "weight_scale",
                           "global": "weight_global_scale", "input": "input_global_scale"},
    "modelopt": {"packed": "weight", "scale": "weight_scale", "global": "weight_scale_2",
                 "input": "input_scale"},
}

EventFn = Callable[[str, str], None]  # (counter name, message)


def _no_event(code: str, message: str) -> None:
    pass


def unpack_codes(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [..., n] -> int64 codes [..., 2n], low nibble first."""
    p = packed.to(torch.int64)
    return torch.stack([p & 0x0F, p >> 4], dim=-1).flatten(-2)


def pack_codes(codes: torch.Tensor) -> torch.Tensor:
    """int codes [..., 2n] (0..15) -> uint8 [..., n], element 2j in the low nibble."""
    c = codes.to(torch.uint8)
    return (c[..., 0::2] | (c[..., 1::2] << 4)).contiguous()


def e2m1_values(codes: torch.Tensor) -> torch.Tensor:
    return _E2M1.to(codes.device)[codes]


def check_shapes(name: str, packed_shape, scale_shape, expected: tuple[int, int] | None,
                 group_size: int = GROUP_SIZE) -> tuple[int, int]:
    """The [out, in/2] codes and [out, in/16] scales agree with each other and the model.

    Returns (out, in) of the dequantised weight. Raises ModelLoadError naming the tensor.
    """
    packed_shape, scale_shape = tuple(packed_shape), tuple(scale_shape)
    if group_size != GROUP_SIZE:
        raise ModelLoadError(f"{name}: NVFP4 group size {group_size}; the format (and the "
                             f"engine) requires {GROUP_SIZE}")
    if len(packed_shape) != 2 or len(scale_shape) != 2:
        raise ModelLoadError(f"{name}: NVFP4 codes {list(packed_shape)} and block scales "
                             f"{list(scale_shape)} must both be 2-D ([out, in/2], [out, in/16])")
    rows, half = packed_shape
    cols = 2 * half
    if rows == 0 or half == 0:
        raise ModelLoadError(f"{name}: NVFP4 codes have an empty shape {list(packed_shape)}")
    if cols % group_size:
        raise ModelLoadError(f"{name}: NVFP4 row of {cols} elements is not a multiple of the "
                             f"group size {group_size}")
    want_scale = (rows, cols // group_size)
    if scale_shape != want_scale:
        hint = ""
        if scale_shape == want_scale[::-1]:
            hint = " (transposed)"
        elif scale_shape[0] == rows and scale_shape[1]:
            hint = f" (group size {cols / scale_shape[1]:g} instead of {group_size})"
        raise ModelLoadError(f"{name}: NVFP4 block scales have shape {list(scale_shape)}, "
                             f"expected {list(want_scale)} for codes {list(packed_shape)} and "
                             f"group size {group_size}{hint}")
    if expected is not None and (rows, cols) != tuple(expected):
        raise ModelLoadError(f"{name}: NVFP4 codes {list(packed_shape)} dequantise to "
                             f"[{rows}, {cols}], expected {list(expected)} from config.json")
    return rows, cols


def check_dtypes(name: str, packed: torch.Tensor, scale: torch.Tensor) -> None:
    if packed.dtype != torch.uint8:
        raise ModelLoadError(f"{name}: NVFP4 codes have dtype {_dt(packed.dtype)}, expected U8 "
                             "(two E2M1 codes per byte)")
    if scale.dtype != torch.float8_e4m3fn:
        hint = {torch.uint8: " (U8 block scales look like MXFP4's UE8M0, not NVFP4)",
                torch.float8_e5m2: " (E5M2 is an activation format)"}.get(scale.dtype, "")
        raise ModelLoadError(f"{name}: NVFP4 block scales have dtype {_dt(scale.dtype)}, "
                             f"expected F8_E4M3{hint}")


def _dt(dtype: torch.dtype) -> str:
    return {torch.uint8: "U8", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
            torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
            torch.int8: "I8", torch.int32: "I32", torch.int64: "I64", torch.bool: "BOOL"}.get(
                dtype, str(dtype).replace("torch.", ""))


def scalar_value(name: str, t: torch.Tensor) -> float:
    """A per-tensor scale: one element (shape [], [1] or [1, 1])."""
    if t.numel() != 1:
        raise ModelLoadError(f"{name}: expected one value (a per-tensor scale), got shape "
                             f"{list(t.shape)}")
    if not t.dtype.is_floating_point:
        raise ModelLoadError(f"{name}: per-tensor scale has dtype {_dt(t.dtype)}, expected a "
                             "float (F32)")
    return float(t.reshape(()).to(torch.float64))


def tensor_multiplier(name: str, value: float, layout: str, on_event: EventFn = _no_event
                      ) -> float:
    """The per-tensor factor the codes are multiplied by, with the zero / non-finite guard.

    compressed-tensors stores a divisor (weight_global_scale), ModelOpt a multiplier
    (weight_scale_2). Zero or non-finite values give 0 and an event; never Inf or NaN.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown NVFP4 layout {layout!r}")
    if not math.isfinite(value):
        on_event("nonfinite_global_scale",
                 f"{name} = {value}: not finite; the weight is set to 0 (was it exported from a "
                 "layer that never saw calibration data?)")
        return 0.0
    if value == 0.0:
        what = ("a zero divisor would give Inf" if layout == "compressed-tensors"
                else "the layer is null")
        on_event("zero_global_scale", f"{name} = 0: {what}; the weight is set to 0")
        return 0.0
    if value < 0:
        on_event("negative_global_scale", f"{name} = {value}: negative; kept as stored "
                 "(the weight's signs flip)")
    if layout == "modelopt":
        return value
    inv = 1.0 / value
    if not math.isfinite(inv) or inv == 0.0 or abs(inv) > _F32_MAX:
        on_event("nonfinite_global_scale",
                 f"{name} = {value}: its reciprocal is not a usable float; the weight is set to 0")
        return 0.0
    return inv


def dequantize(packed: torch.Tensor, block_scale: torch.Tensor, multiplier: float,
               name: str = "weight", on_event: EventFn = _no_event) -> torch.Tensor:
    """codes [out, in/2] uint8, scales [out, in/16] float8_e4m3fn -> float32 [out, in].

    value = e2m1(code) * float(block_scale) * multiplier (see `tensor_multiplier`). NaN block
    scales zero their block (an event); the multiplication is done in float32, block scale
    first, as the kernels of both producers do.
    """
    check_dtypes(name, packed, block_scale)
    rows, cols = check_shapes(name, packed.shape, block_scale.shape, None)
    scale = block_scale.to(torch.float32)
    bad = torch.isnan(scale)
    if bool(bad.any()):
        on_event("nonfinite_block_scales",
                 f"{name}: {int(bad.sum())} NaN block scale(s) (FP8 code 0x7F/0xFF); those "
                 "blocks are set to 0")
        scale = torch.where(bad, torch.zeros_like(scale), scale)
    neg = scale < 0
    if bool(neg.any()):
        on_event("negative_block_scales",
                 f"{name}: {int(neg.sum())} negative block scale(s); kept as stored")
    vals = _PAIRS.to(packed.device)[packed.to(torch.int64)].view(rows, cols // GROUP_SIZE,
                                                                  GROUP_SIZE)
    vals.mul_(scale[..., None]).mul_(torch.tensor(multiplier, dtype=torch.float32))
    return vals.view(rows, cols)


def round_to_e2m1(x: torch.Tensor) -> torch.Tensor:
    """float -> E2M1 codes, nearest value, ties to the even code; |x| > 6 saturates."""
    mag = x.abs().clamp(max=FP4_MAX)
    idx = torch.bucketize(mag, _E2M1_BOUNDS.to(x.device), right=False)
    bounds = _E2M1_BOUNDS.to(x.device)
    tie = (idx < len(bounds)) & (mag == bounds[idx.clamp(max=len(bounds) - 1)]) & (idx % 2 == 1)
    idx = torch.where(tie, idx + 1, idx)
    return torch.where((x < 0) & (idx > 0), idx + 8, idx)


def quantize(w: torch.Tensor, layout: str) -> dict[str, torch.Tensor]:
    """float weight [out, in] -> the layout's tensors (without input scales).

    Per-tensor scale s2 = amax / (6 * 448), so the largest block scale lands at FP8's maximum;
    block scale = fp8(block_amax / 6 / s2); codes = e2m1(w / (block_scale * s2)).
    compressed-tensors stores 1 / s2 as weight_global_scale, ModelOpt s2 as weight_scale_2.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown NVFP4 layout {layout!r} (known: {', '.join(LAYOUTS)})")
    w = w.to(torch.float32)
    rows, cols = w.shape
    if cols % GROUP_SIZE:
        raise ValueError(f"row length {cols} is not a multiple of {GROUP_SIZE}")
    amax = float(w.abs().max()) if w.numel() else 0.0
    s2 = amax / (FP4_MAX * FP8_E4M3_MAX) if amax > 0 else 1.0
    if layout == "compressed-tensors":
        gs = torch.tensor([1.0 / s2], dtype=torch.float32)
        s2_eff = float(1.0 / gs.to(torch.float64))  # the loader divides by the stored value
    else:
        s2_eff = float(torch.tensor(s2, dtype=torch.float32))
    blocks = w.view(rows, cols // GROUP_SIZE, GROUP_SIZE)
    bamax = blocks.abs().amax(-1)
    bscale = (bamax / FP4_MAX / s2_eff).clamp(max=FP8_E4M3_MAX).to(torch.float8_e4m3fn)
    eff = bscale.to(torch.float32) * s2_eff
    x = torch.where(eff[..., None] > 0, blocks / eff[..., None].clamp(min=1e-38),
                    torch.zeros_like(blocks))
    codes = round_to_e2m1(x).view(rows, cols)
    names = TENSOR_NAMES[layout]
    out = {names["packed"]: pack_codes(codes), names["scale"]: bscale.contiguous()}
    if layout == "compressed-tensors":
        out[names["global"]] = gs
    else:
        out[names["global"]] = torch.tensor(s2_eff, dtype=torch.float32)
    return out


def activation_scale(amax: float, layout: str) -> torch.Tensor:
    """The activation scale a producer would store for inputs of magnitude up to `amax`."""
    s = amax / (FP4_MAX * FP8_E4M3_MAX) if amax > 0 else 1.0
    if layout == "compressed-tensors":
        return torch.tensor([1.0 / s], dtype=torch.float32)  # input_global_scale, a divisor
    return torch.tensor(s, dtype=torch.float32)  # input_scale, a multiplier
