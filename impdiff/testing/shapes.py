"""Models with the real shapes of published checkpoints and random quantised blocks, for speed.

A benchmark needs the tensor shapes and storage types of a real model, not its values, and a
GPU machine has no network to fetch one. These GGUFs are written directly as random blocks of
the types llama-quantize would pick (`Q4_K_M`: Q6_K for the output, and for attn_v and
ffn_down on llama.cpp's `use_more_bits` layers, Q4_K elsewhere; `Q8_0`: all Q8_0), with fp16
block scales set so that weights stay small. Every block is valid, so llama.cpp and the engine
both run the file; quantising 16 GB of float weights first would cost minutes of GPU-machine time
and change nothing measured.

    python -m impdiff.testing.shapes llama3-8b Q4_K_M /tmp/llama3-8b-Q4_K_M.gguf
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter

T = GGMLQuantizationType


@dataclass(frozen=True)
class Shape:
    arch: str
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    rope_base: float
    sliding_window: int = 0
    tied: bool = False


SHAPES = {
    "llama3-8b": Shape("llama", 128256, 4096, 32, 32, 8, 128, 14336, 500000.0),
    "gemma3-4b": Shape("gemma3", 262144, 2560, 34, 8, 4, 256, 10240, 1000000.0,
                       sliding_window=1024, tied=True),
}
MIXES = ("Q4_K_M", "Q8_0")
# byte offsets of fp16 scales in a block (d, then dmin where there is one)
_SCALES = {T.Q4_K: (0, 2), T.Q6_K: (208,), T.Q8_0: (0,)}
_SCALE_VALUE = {T.Q4_K: (2e-4, 1e-3), T.Q6_K: (2e-3,), T.Q8_0: (4e-4,)}


def use_more_bits(i: int, n: int) -> bool:
    """llama.cpp's choice of layers that get more bits in the _M mixes."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def tensor_types(shape: Shape, mix: str) -> dict[str, tuple[tuple[int, int], T]]:
    """GGUF name -> ((rows, cols) in torch order, storage type)."""
    if mix not in MIXES:
        raise ValueError(f"unknown mix '{mix}' (known: {', '.join(MIXES)})")
    s, q, kv = shape, shape.n_head * shape.head_dim, shape.n_head_kv * shape.head_dim
    base = T.Q4_K if mix == "Q4_K_M" else T.Q8_0
    big = T.Q6_K if mix == "Q4_K_M" else T.Q8_0
    out = {"token_embd.weight": ((s.n_vocab, s.n_embd), big if s.tied else base)}
    if not s.tied:
        out["output.weight"] = ((s.n_vocab, s.n_embd), big)
    for i in range(s.n_layer):
        more = big if use_more_bits(i, s.n_layer) else base
        out.update({
            f"blk.{i}.attn_q.weight": ((q, s.n_embd), base),
            f"blk.{i}.attn_k.weight": ((kv, s.n_embd), base),
            f"blk.{i}.attn_v.weight": ((kv, s.n_embd), more),
            f"blk.{i}.attn_output.weight": ((s.n_embd, q), base),
            f"blk.{i}.ffn_gate.weight": ((s.n_ff, s.n_embd), base),
            f"blk.{i}.ffn_up.weight": ((s.n_ff, s.n_embd), base),
            f"blk.{i}.ffn_down.weight": ((s.n_embd, s.n_ff), more),
        })
    return out


def _random_blocks(rng, qtype: T, rows: int, cols: int) -> np.ndarray:
    block, size = GGML_QUANT_SIZES[qtype]
    n = rows * cols // block
    data = rng.integers(0, 256, size=(n, size), dtype=np.uint8)
    for off, value in zip(_SCALES[qtype], _SCALE_VALUE[qtype]):
        data[:, off:off + 2] = np.full(n, value, np.float16).view(np.uint8).reshape(n, 2)
    return data.reshape(rows, cols // block * size)


def write(name: str, mix: str, path: str | Path, seed: int = 0) -> Path:
    shape = SHAPES[name]
    rng = np.random.default_rng(seed)
    w = GGUFWriter(str(path), shape.arch)
    w.add_name(f"{name} shape, random {mix} blocks")
    w.add_context_length(8192)
    w.add_embedding_length(shape.n_embd)
    w.add_block_count(shape.n_layer)
    w.add_feed_forward_length(shape.n_ff)
    w.add_head_count(shape.n_head)
    w.add_head_count_kv(shape.n_head_kv)
    w.add_key_length(shape.head_dim)
    w.add_value_length(shape.head_dim)
    w.add_rope_dimension_count(shape.head_dim)
    w.add_rope_freq_base(shape.rope_base)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_vocab_size(shape.n_vocab)
    if shape.sliding_window:
        w.add_sliding_window(shape.sliding_window)
    w.add_file_type(15 if mix == "Q4_K_M" else 7)
    w.add_tokenizer_model("none")
    norms = [f"blk.{i}.{n}.weight" for i in range(shape.n_layer) for n in
             ("attn_norm", "ffn_norm") + (("attn_q_norm", "attn_k_norm", "post_attention_norm",
                                          "post_ffw_norm") if shape.arch == "gemma3" else ())]
    for name_ in norms + ["output_norm.weight"]:
        dim = shape.head_dim if "_q_norm" in name_ or "_k_norm" in name_ else shape.n_embd
        w.add_tensor(name_, np.ones(dim, np.float32))
    for tname, ((rows, cols), qtype) in tensor_types(shape, mix).items():
        # a uint8 array of [rows, bytes per row]: gguf derives the value shape from the type
        w.add_tensor(tname, _random_blocks(rng, qtype, rows, cols), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(path)


if __name__ == "__main__":
    write(sys.argv[1], sys.argv[2], sys.argv[3])
