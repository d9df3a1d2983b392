"""engine.quants against gguf's numpy reference dequantisers, on random blocks.

The reference (`gguf.quants.dequantize`) converts scales to float32 and multiplies/adds in the
same order as ggml and as our torch code, so every comparison here is bit for bit (equal int32
bit patterns), not within a tolerance. Random bytes cover every bit of every packed field; only
the fp16 scale fields are overwritten with small finite values, so that no block decodes to
NaN/Inf and a mismatch cannot hide behind NaN != NaN. The float types keep their random bytes
(NaNs and infinities included) and are compared bit for bit as well.
"""

from __future__ import annotations

import warnings

import gguf
import gguf.quants
import numpy as np
import pytest
import torch

from impdiff.engine.errors import ModelLoadError
from impdiff.engine.quants import SUPPORTED_TYPES, dequantize, type_name

T = gguf.GGMLQuantizationType

# Byte offsets of the fp16 d/m/dmin fields inside one block (ggml's block_* structs), written
# out here independently of the engine's layout table.
FP16_FIELDS = {
    T.Q8_0: (0,),
    T.Q4_0: (0,),
    T.Q4_1: (0, 2),
    T.Q5_0: (0,),
    T.Q5_1: (0, 2),
    T.Q2_K: (80, 82),
    T.Q3_K: (108,),
    T.Q4_K: (0, 2),
    T.Q5_K: (0, 2),
    T.Q6_K: (208,),
}
FLOAT_TYPES = (T.F32, T.F16, T.BF16)
ALL_TYPES = FLOAT_TYPES + tuple(FP16_FIELDS)

# (leading dims, blocks per row): a few rows of several blocks, plus a 3-D tensor.
SHAPES = [((3,), 1), ((4,), 3), ((5,), 2), ((2, 3), 2)]


def random_tensor(qtype: T, lead: tuple[int, ...], blocks_per_row: int, seed: int = 0):
    """Random stored bytes for a tensor, read-only like gguf's memmaps, and its torch shape."""
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng([seed, int(qtype), len(lead), blocks_per_row])
    n_blocks = int(np.prod(lead)) * blocks_per_row
    blocks = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    for off in FP16_FIELDS.get(qtype, ()):
        scale = (rng.standard_normal(n_blocks) * 0.05).astype(np.float16)
        blocks[:, off : off + 2] = scale.view(np.uint8).reshape(n_blocks, 2)
    raw = blocks.reshape(*lead, blocks_per_row * type_size)
    raw.flags.writeable = False
    return raw, (*lead, blocks_per_row * block_size)


def reference(raw: np.ndarray, qtype: T) -> torch.Tensor:
    return torch.from_numpy(np.array(gguf.quants.dequantize(raw, qtype), dtype=np.float32))


def assert_bits_equal(got: torch.Tensor, want: torch.Tensor):
    assert got.dtype == torch.float32 and got.shape == want.shape
    same = got.cpu().view(torch.int32) == want.view(torch.int32)
    if not bool(same.all()):
        idx = int((~same).reshape(-1).nonzero()[0])
        pytest.fail(
            f"{int((~same).sum())} of {same.numel()} values differ; first at flat index {idx}: "
            f"got {got.reshape(-1)[idx].item()!r}, want {want.reshape(-1)[idx].item()!r}"
        )


def test_supported_types_are_the_tested_ones():
    assert set(SUPPORTED_TYPES) == set(ALL_TYPES)


@pytest.mark.parametrize("lead,blocks_per_row", SHAPES)
@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
def test_matches_gguf_reference(qtype, lead, blocks_per_row):
    raw, shape = random_tensor(qtype, lead, blocks_per_row)
    want = reference(raw, qtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a read-only memmap must not trip torch's warning
        got = dequantize(raw, qtype, shape)
    assert got.shape == torch.Size(shape)
    assert_bits_equal(got, want.reshape(shape))
    # Same bytes handed over as a torch tensor, and the type as a plain int.
    assert_bits_equal(dequantize(torch.from_numpy(raw.copy()), int(qtype), shape), want.reshape(shape))


@pytest.mark.parametrize("qtype,dtype", [(T.F32, np.float32), (T.F16, np.float16), (T.BF16, np.uint16)])
def test_float_types_accept_typed_arrays(qtype, dtype):
    raw, shape = random_tensor(qtype, (4,), 5)
    typed = raw.view(dtype).reshape(shape)  # how gguf's reader hands float tensors
    assert_bits_equal(dequantize(typed, qtype, shape), reference(raw, qtype).reshape(shape))


def test_q4_0_hand_built_block():
    # d = 0.5; byte j holds value j in its low nibble and 15 - j in its high nibble, so the block
    # decodes to 0.5 * ([0..15] - 8) followed by 0.5 * ([15..0] - 8).
    j = np.arange(16, dtype=np.uint8)
    block = np.concatenate([np.array([0.5], np.float16).view(np.uint8), j | ((15 - j) << 4)])
    want = 0.5 * (np.concatenate([j, 15 - j]).astype(np.float32) - 8)
    assert torch.equal(dequantize(block, T.Q4_0, (32,)), torch.from_numpy(want))


def test_unsupported_type_is_a_load_error():
    raw, shape = random_tensor(T.Q4_K, (2,), 1)
    with pytest.raises(ModelLoadError) as e:
        dequantize(raw, T.IQ2_XXS, shape)
    msg = str(e.value)
    assert "IQ2_XXS" in msg and "Q4_K" in msg and "Q8_0" in msg and "\n" not in msg
    with pytest.raises(ModelLoadError, match="type 9999"):
        dequantize(raw, 9999, shape)


@pytest.mark.parametrize("qtype", [T.F16, T.Q8_0, T.Q4_K], ids=lambda t: t.name)
def test_wrong_byte_count_is_a_load_error(qtype):
    raw, shape = random_tensor(qtype, (3,), 2)
    with pytest.raises(ModelLoadError, match="bytes"):
        dequantize(raw.reshape(-1)[:-1], qtype, shape)
    with pytest.raises(ModelLoadError, match="bytes"):
        dequantize(raw, qtype, (4, shape[1]))


def test_row_not_a_whole_number_of_blocks_is_a_load_error():
    raw, _ = random_tensor(T.Q4_K, (2,), 1)
    with pytest.raises(ModelLoadError, match="block size 256"):
        dequantize(raw, T.Q4_K, (2, 128))


def test_type_name():
    assert type_name(T.Q6_K) == "Q6_K"
    assert type_name(int(T.BF16)) == "BF16"
    assert type_name(12345) == "type 12345"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
def test_cuda_matches_reference(qtype):
    raw, shape = random_tensor(qtype, (4,), 3)
    got = dequantize(torch.from_numpy(raw.copy()).cuda(), qtype, shape)
    assert got.device.type == "cuda"
    assert_bits_equal(got, reference(raw, qtype).reshape(shape))
