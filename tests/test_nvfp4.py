"""NVFP4 dequantisation checked against a reference written from the format's definition.

The reference below is deliberately naive and independent of `engine.nvfp4`: it decodes bits
with the formulas of the formats (no tables, no torch float8 types), element by element, in
float64. Tensors are built byte by byte: the packed bytes are `low | high << 4` of chosen codes,
the scale bytes are chosen FP8 bit patterns. The engine must agree with the reference for every
code and every scale byte, in both layouts, and with gguf.quants' NVFP4 where the layouts meet.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from impdiff.engine import nvfp4
from impdiff.engine.errors import ModelLoadError

# --------------------------------------------------------------------------------------------
# the reference, from the definitions
# --------------------------------------------------------------------------------------------


def ref_e2m1(code: int) -> float:
    """FP4 E2M1: bit 3 sign, bits 2..1 exponent (bias 1), bit 0 mantissa; exp 0 is subnormal."""
    sign = -1.0 if code & 0b1000 else 1.0
    exp = (code >> 1) & 0b11
    man = code & 0b1
    if exp == 0:
        mag = man * 0.5  # subnormal: 0.m * 2^(1 - bias) = m/2
    else:
        mag = (1.0 + man / 2.0) * 2.0 ** (exp - 1)
    return sign * mag


def ref_fp8_e4m3(byte: int) -> float:
    """FP8 E4M3 (the 'fn' variant): bit 7 sign, bits 6..3 exponent (bias 7), bits 2..0 mantissa;
    exponent 0 is subnormal; S.1111.111 is NaN; there are no infinities."""
    sign = -1.0 if byte & 0x80 else 1.0
    exp = (byte >> 3) & 0xF
    man = byte & 0x7
    if exp == 0xF and man == 0x7:
        return math.nan
    if exp == 0:
        return sign * (man / 8.0) * 2.0 ** (1 - 7)
    return sign * (1.0 + man / 8.0) * 2.0 ** (exp - 7)


def ref_dequant(packed: list[list[int]], scale_bytes: list[list[int]], global_value: float,
                layout: str) -> list[list[float]]:
    """Element j of a row: code = low nibble of byte j//2 if j is even, else the high nibble;
    value = e2m1(code) * fp8(scale byte j//16) * (1/global for compressed-tensors,
    global for ModelOpt)."""
    out = []
    for prow, srow in zip(packed, scale_bytes):
        row = []
        for j in range(2 * len(prow)):
            byte = prow[j // 2]
            code = byte & 0xF if j % 2 == 0 else byte >> 4
            block = ref_fp8_e4m3(srow[j // 16])
            if layout == "compressed-tensors":
                v = ref_e2m1(code) * block / global_value
            else:
                v = ref_e2m1(code) * block * global_value
            row.append(v)
        out.append(row)
    return out


def engine_dequant(packed, scale_bytes, global_value, layout, events=None):
    p = torch.tensor(packed, dtype=torch.uint8)
    s = torch.tensor(scale_bytes, dtype=torch.uint8).view(torch.float8_e4m3fn)
    ev = (lambda c, m: events.append(c)) if events is not None else nvfp4._no_event
    mult = nvfp4.tensor_multiplier("w", global_value, layout, ev)
    return nvfp4.dequantize(p, s, mult, "w", ev)


def assert_matches(engine: torch.Tensor, ref: list[list[float]], rtol=2e-7):
    r = np.array(ref, dtype=np.float64)
    e = engine.double().numpy()
    assert e.shape == r.shape
    np.testing.assert_allclose(e, r, rtol=rtol, atol=0)


# --------------------------------------------------------------------------------------------
# the reference itself is right (a few values from the format tables)
# --------------------------------------------------------------------------------------------


def test_reference_decoders_match_the_published_tables():
    assert [ref_e2m1(c) for c in range(8)] == [0, 0.5, 1, 1.5, 2, 3, 4, 6]
    assert [ref_e2m1(c) for c in range(8, 16)] == [-0.0, -0.5, -1, -1.5, -2, -3, -4, -6]
    assert ref_fp8_e4m3(0x7E) == 448.0  # the largest finite E4M3
    assert ref_fp8_e4m3(0x01) == 2.0 ** -9  # smallest subnormal
    assert ref_fp8_e4m3(0x38) == 1.0
    assert ref_fp8_e4m3(0xB8) == -1.0
    assert math.isnan(ref_fp8_e4m3(0x7F)) and math.isnan(ref_fp8_e4m3(0xFF))
    # and torch's float8_e4m3fn agrees with it on all 256 bytes
    t = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float().tolist()
    for b in range(256):
        r = ref_fp8_e4m3(b)
        assert (math.isnan(r) and math.isnan(t[b])) or r == t[b], b


# --------------------------------------------------------------------------------------------
# byte-by-byte tensors vs the engine
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", nvfp4.LAYOUTS)
def test_every_code_pair_and_nibble_order(layout):
    """All 256 packed bytes (every low/high code pair), unit scales."""
    packed = [list(range(r * 8, r * 8 + 8)) for r in range(32)]  # 32 rows x 8 bytes = 16 values
    scales = [[0x38] for _ in range(32)]  # FP8 1.0, one block per row
    g = 1.0
    out = engine_dequant(packed, scales, g, layout)
    assert_matches(out, ref_dequant(packed, scales, g, layout))
    # nibble order, spelled out: byte 0x21 holds code 1 (0.5) first, then code 2 (1.0)
    row = engine_dequant([[0x21] * 8], [[0x38]], 1.0, layout)[0]
    assert row[:2].tolist() == [0.5, 1.0]
    # the sign bit
    assert engine_dequant([[0x9F] * 8], [[0x38]], 1.0, layout)[0][:2].tolist() == [-6.0, -0.5]


@pytest.mark.parametrize("layout", nvfp4.LAYOUTS)
def test_every_finite_scale_byte_and_both_scale_levels(layout):
    """Every finite FP8 scale byte (positive and negative), random codes, a non-trivial global
    scale; compressed-tensors divides by it, ModelOpt multiplies."""
    rng = random.Random(1)
    finite = [b for b in range(256) if b not in (0x7F, 0xFF)]
    rows = len(finite) // 2  # two blocks (32 values, 16 bytes) per row
    packed = [[rng.randrange(256) for _ in range(16)] for _ in range(rows)]
    scales = [[finite[2 * r], finite[2 * r + 1]] for r in range(rows)]
    for g in (1.0, 0.125, 3.0e-3, 2688.0 / 1.7):
        events = []
        out = engine_dequant(packed, scales, g, layout, events)
        assert_matches(out, ref_dequant(packed, scales, g, layout))
        assert "negative_block_scales" in events  # bytes >= 0x80 are negative scales, reported


@pytest.mark.parametrize("layout", nvfp4.LAYOUTS)
def test_random_bytes_wide_rows(layout):
    rng = random.Random(7)
    cols = 128
    packed = [[rng.randrange(256) for _ in range(cols // 2)] for _ in range(24)]
    scales = [[rng.choice([b for b in range(0x01, 0x7F)]) for _ in range(cols // 16)]
              for _ in range(24)]
    g = 0.0371
    assert_matches(engine_dequant(packed, scales, g, layout),
                   ref_dequant(packed, scales, g, layout))


@pytest.mark.parametrize("layout", nvfp4.LAYOUTS)
def test_nan_block_scales_zero_their_block_with_an_event(layout):
    packed = [[0x77] * 16]  # every value 6.0 before scaling
    scales = [[0x7F, 0x38]]  # NaN, then 1.0
    events = []
    out = engine_dequant(packed, scales, 1.0, layout, events)
    assert torch.isfinite(out).all()
    assert out[0, :16].abs().sum() == 0 and out[0, 16:].tolist() == [6.0] * 16
    assert events == ["nonfinite_block_scales"]


@pytest.mark.parametrize("layout", nvfp4.LAYOUTS)
@pytest.mark.parametrize("bad", [0.0, math.nan, math.inf, -math.inf])
def test_zero_or_nonfinite_global_scale_gives_zero_never_inf(layout, bad):
    events = []
    out = engine_dequant([[0x77] * 8], [[0x7E]], bad, layout, events)
    assert torch.isfinite(out).all() and out.abs().sum() == 0
    assert events == ["zero_global_scale" if bad == 0 else "nonfinite_global_scale"]


def test_compressed_tensors_reciprocal_overflow_is_guarded():
    events = []
    assert nvfp4.tensor_multiplier("w", 1e-45, "compressed-tensors",
                                   lambda c, m: events.append(c)) == 0.0
    assert events == ["nonfinite_global_scale"]
    # ModelOpt's multiplier of the same value is a legitimate (tiny) scale
    assert nvfp4.tensor_multiplier("w", 1e-45, "modelopt") == 1e-45


# --------------------------------------------------------------------------------------------
# against gguf.quants (GGML's NVFP4: 64-value blocks, 4 unsigned E4M3 sub-block scales)
# --------------------------------------------------------------------------------------------


def to_ggml_blocks(packed: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """HF NVFP4 (pairs low-first, one scale per 16) -> GGML NVFP4 blocks of 36 bytes.

    GGML keeps, per 16-value sub-block, values 0..7 in the low nibbles and 8..15 in the high
    nibbles of its 8 bytes; its E2M1 table is doubled and its UE4M3 decode halves, which
    multiplies out to the same values for positive scales.
    """
    rows, half = packed.shape
    lo, hi = packed & 0x0F, packed >> 4
    codes = np.stack([lo, hi], -1).reshape(rows, half * 2)  # element order
    sub = codes.reshape(rows, -1, 16)
    qs = (sub[..., :8] | (sub[..., 8:] << 4)).astype(np.uint8)  # [rows, nsub, 8]
    qs = qs.reshape(rows, -1, 4, 8)
    d = scales.reshape(rows, -1, 4).astype(np.uint8)
    blocks = np.concatenate([d, qs.reshape(rows, -1, 32)], axis=-1)
    return blocks.reshape(rows, -1)


def test_matches_gguf_quants_nvfp4():
    gguf = pytest.importorskip("gguf")
    from gguf import GGMLQuantizationType, quants

    rng = np.random.default_rng(3)
    rows, cols = 16, 256
    packed = rng.integers(0, 256, (rows, cols // 2), dtype=np.uint8)
    scales = rng.integers(0x01, 0x7F, (rows, cols // 16), dtype=np.uint8)  # positive, not NaN
    blocks = to_ggml_blocks(packed, scales)
    ggml = quants.dequantize(blocks, GGMLQuantizationType.NVFP4).reshape(rows, cols)
    ours = nvfp4.dequantize(torch.from_numpy(packed),
                            torch.from_numpy(scales).view(torch.float8_e4m3fn), 1.0)
    np.testing.assert_array_equal(ours.numpy(), ggml.astype(np.float32))
    assert gguf is not None


# --------------------------------------------------------------------------------------------
# the quantiser (used by `impdiff convert`) and the guards on shapes and dtypes
# --------------------------------------------------------------------------------------------


def test_round_to_e2m1_nearest_ties_to_even():
    x = torch.tensor([0.0, 0.2, 0.25, 0.3, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 7.0, -0.75, -5.0])
    vals = nvfp4.e2m1_values(nvfp4.round_to_e2m1(x)).tolist()
    assert vals == [0.0, 0.0, 0.0, 0.5, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0, -1.0, -4.0]


@pytest.mark.parametrize("layout", nvfp4.LAYOUTS)
def test_quantize_round_trip(layout):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 256, generator=g)
    q = nvfp4.quantize(w, layout)
    names = nvfp4.TENSOR_NAMES[layout]
    assert q[names["packed"]].dtype == torch.uint8 and q[names["packed"]].shape == (64, 128)
    assert q[names["scale"]].dtype == torch.float8_e4m3fn and q[names["scale"]].shape == (64, 16)
    mult = nvfp4.tensor_multiplier("w", float(q[names["global"]].reshape(())), layout)
    d = nvfp4.dequantize(q[names["packed"]], q[names["scale"]], mult)
    rel = float((d - w).norm() / w.norm())
    assert rel < 0.11  # 4-bit with 16-value blocks: ~9% RMS error on Gaussian weights
    # values on the grid (each block reaching 6 * 0.25, so every block scale is 448) come back
    exact = nvfp4.e2m1_values(torch.randint(0, 16, (8, 64), generator=g)) * 0.25
    exact[:, ::16] = 1.5
    q = nvfp4.quantize(exact, layout)
    mult = nvfp4.tensor_multiplier("w", float(q[names["global"]].reshape(())), layout)
    back = nvfp4.dequantize(q[names["packed"]], q[names["scale"]], mult)
    assert torch.allclose(back, exact, rtol=1e-6, atol=0)


@pytest.mark.parametrize("packed,scale,fragment", [
    ((64, 64), (8, 64), "transposed"),
    ((64, 64), (64, 16), "group size 8"),
    ((64, 64), (64, 4), "group size 32"),
    ((64, 0), (64, 0), "empty"),
    ((64, 4), (64, 1), "not a multiple"),
    ((64,), (64, 8), "2-D"),
])
def test_shape_guards(packed, scale, fragment):
    with pytest.raises(ModelLoadError, match=fragment):
        nvfp4.check_shapes("layer.w", packed, scale, None)


def test_shape_guard_against_the_model_and_group_size():
    assert nvfp4.check_shapes("w", (64, 64), (64, 8), (64, 128)) == (64, 128)
    with pytest.raises(ModelLoadError, match=r"expected \[64, 256\]"):
        nvfp4.check_shapes("w", (64, 64), (64, 8), (64, 256))
    with pytest.raises(ModelLoadError, match="group size 32"):
        nvfp4.check_shapes("w", (64, 64), (64, 4), None, group_size=32)


@pytest.mark.parametrize("dtype,fragment", [
    (torch.uint8, "MXFP4"), (torch.float8_e5m2, "E5M2"), (torch.float16, "F16"),
    (torch.float32, "F32"), (torch.bfloat16, "BF16")])
def test_block_scale_dtype_must_be_e4m3(dtype, fragment):
    packed = torch.zeros(4, 8, dtype=torch.uint8)
    scale = torch.ones(4, 1).to(dtype)
    with pytest.raises(ModelLoadError, match=f"expected F8_E4M3.*{fragment}|{fragment}.*F8_E4M3"):
        nvfp4.check_dtypes("layer.w", packed, scale)


def test_codes_must_be_u8():
    with pytest.raises(ModelLoadError, match="codes have dtype I8"):
        nvfp4.check_dtypes("w", torch.zeros(4, 8, dtype=torch.int8),
                           torch.ones(4, 1).to(torch.float8_e4m3fn))
