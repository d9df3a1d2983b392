"""Tiny seeded models that llama.cpp loads: GGUF (F32, quantised by llama.cpp) and HF layout.

The same random weights are written as a GGUF file and as an HF-style directory
(`config.json` + `model.safetensors`), so later format A/B runs compare like with like.
Sizes default to a hidden width of 256 because llama.cpp's K-quants need rows that are
multiples of 256 (with narrower rows it silently falls back to Q5_0/Q8_0).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

# llama.cpp's `llama_ftype` values for `llama_model_quantize` (include/llama.h).
LLAMA_FTYPES: dict[str, int] = {
    "F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9,
    "Q2_K": 10, "Q3_K_M": 12, "Q4_K_S": 14, "Q4_K_M": 15, "Q5_K_M": 17, "Q6_K": 18, "BF16": 32,
}


@dataclass(frozen=True)
class SyntheticSpec:
    arch: str  # llama | qwen3 | gemma3
    n_vocab: int = 512
    n_embd: int = 256
    n_layer: int = 2
    n_head: int = 4
    n_head_kv: int = 2
    head_dim: int = 64
    n_ff: int = 512
    n_ctx: int = 4096
    rope_base: float = 10000.0
    sliding_window: int = 32
    rms_eps: float = 1e-6
    seed: int = 0


PRESETS: dict[str, SyntheticSpec] = {
    "llama": SyntheticSpec("llama"),
    "qwen3": SyntheticSpec("qwen3", rope_base=1_000_000.0),
    # six layers so that layer 5 is global and 0-4 slide, as in Gemma 3
    "gemma3": SyntheticSpec("gemma3", n_layer=6, n_head_kv=1, rope_base=1_000_000.0),
}


def _weights(spec: SyntheticSpec) -> dict[str, np.ndarray]:
    """GGUF-named float32 weights in torch order ([out, in]); scaled so activations stay O(1)."""
    rng = np.random.default_rng(spec.seed)
    q, kv = spec.n_head * spec.head_dim, spec.n_head_kv * spec.head_dim
    gemma = spec.arch == "gemma3"

    def mat(rows, cols):
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    w = {"token_embd.weight": rng.standard_normal((spec.n_vocab, spec.n_embd)).astype(np.float32)
         * (0.05 if gemma else 1.0)}
    for i in range(spec.n_layer):
        p = f"blk.{i}."
        w[p + "attn_norm.weight"] = norm(spec.n_embd)
        w[p + "attn_q.weight"] = mat(q, spec.n_embd)
        w[p + "attn_k.weight"] = mat(kv, spec.n_embd)
        w[p + "attn_v.weight"] = mat(kv, spec.n_embd)
        w[p + "attn_output.weight"] = mat(spec.n_embd, q)
        w[p + "ffn_norm.weight"] = norm(spec.n_embd)
        w[p + "ffn_gate.weight"] = mat(spec.n_ff, spec.n_embd)
        w[p + "ffn_up.weight"] = mat(spec.n_ff, spec.n_embd)
        w[p + "ffn_down.weight"] = mat(spec.n_embd, spec.n_ff)
        if spec.arch in ("qwen3", "gemma3"):
            w[p + "attn_q_norm.weight"] = norm(spec.head_dim)
            w[p + "attn_k_norm.weight"] = norm(spec.head_dim)
        if gemma:
            w[p + "post_attention_norm.weight"] = norm(spec.n_embd)
            w[p + "post_ffw_norm.weight"] = norm(spec.n_embd)
    w["output_norm.weight"] = norm(spec.n_embd)
    if not gemma:  # Gemma ties the lm head to the embedding
        w["output.weight"] = mat(spec.n_vocab, spec.n_embd)
    return w


def write_gguf(spec: SyntheticSpec, path: str | Path) -> Path:
    import gguf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(path), spec.arch)
    w.add_name(f"impdiff-synthetic-{spec.arch}")
    w.add_context_length(spec.n_ctx)
    w.add_embedding_length(spec.n_embd)
    w.add_block_count(spec.n_layer)
    w.add_feed_forward_length(spec.n_ff)
    w.add_head_count(spec.n_head)
    w.add_head_count_kv(spec.n_head_kv)
    w.add_key_length(spec.head_dim)
    w.add_value_length(spec.head_dim)
    w.add_rope_dimension_count(spec.head_dim)
    w.add_rope_freq_base(spec.rope_base)
    w.add_layer_norm_rms_eps(spec.rms_eps)
    w.add_vocab_size(spec.n_vocab)
    if spec.arch == "gemma3":
        w.add_sliding_window(spec.sliding_window)
    w.add_file_type(0)
    w.add_tokenizer_model("none")
    for name, t in _weights(spec).items():
        w.add_tensor(name, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def quantize_gguf(src: str | Path, dst: str | Path, qtype: str) -> Path:
    """Quantise with llama.cpp itself (`llama_model_quantize`), so the blocks are llama.cpp's."""
    import llama_cpp

    if qtype not in LLAMA_FTYPES:
        raise ValueError(f"unknown quant type '{qtype}' (known: {', '.join(LLAMA_FTYPES)})")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = LLAMA_FTYPES[qtype]
    params.nthread = 2
    with _quiet_fds():  # llama.cpp prints a line per tensor from C, past Python's streams
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(),
                                            ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({src} -> {qtype}) failed with {rc}")
    return Path(dst)


@contextlib.contextmanager
def _quiet_fds():
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in (1, 2):
            os.dup2(null, fd)
        yield
    finally:
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)
        os.close(null)


def _unpermute_llama_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of the HF->GGUF converter's permute: adjacent-pair rope rows back to halves."""
    rows, cols = w.shape
    return (w.reshape(n_head, rows // n_head // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols))


HF_NAMES = {
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
HF_ARCH = {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM",
           "gemma3": "Gemma3ForCausalLM"}


def write_hf_dir(spec: SyntheticSpec, directory: str | Path) -> Path:
    """The same weights as an HF checkpoint: config.json + model.safetensors (float32)."""
    from safetensors.numpy import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    gemma = spec.arch == "gemma3"
    out: dict[str, np.ndarray] = {}
    for name, t in _weights(spec).items():
        parts = name.split(".")
        if gemma and parts[-2].endswith("norm"):
            t = t - 1.0  # Gemma GGUFs store 1 + w; HF stores w
        if parts[0] == "blk":
            i, kind = parts[1], parts[2]
            if spec.arch == "llama" and kind in ("attn_q", "attn_k"):
                heads = spec.n_head if kind == "attn_q" else spec.n_head_kv
                t = _unpermute_llama_qk(t, heads)
            hf_kind = HF_NAMES.get(kind) or {
                "ffn_norm": "pre_feedforward_layernorm" if gemma else "post_attention_layernorm",
                "post_attention_norm": "post_attention_layernorm",
                "post_ffw_norm": "post_feedforward_layernorm",
            }[kind]
            out[f"model.layers.{i}.{hf_kind}.weight"] = np.ascontiguousarray(t)
        else:
            out[{"token_embd.weight": "model.embed_tokens.weight",
                 "output_norm.weight": "model.norm.weight",
                 "output.weight": "lm_head.weight"}[name]] = t
    save_file(out, str(d / "model.safetensors"))
    config = {
        "architectures": [HF_ARCH[spec.arch]],
        "model_type": spec.arch if spec.arch != "gemma3" else "gemma3_text",
        "vocab_size": spec.n_vocab, "hidden_size": spec.n_embd,
        "num_hidden_layers": spec.n_layer, "num_attention_heads": spec.n_head,
        "num_key_value_heads": spec.n_head_kv, "head_dim": spec.head_dim,
        "intermediate_size": spec.n_ff, "max_position_embeddings": spec.n_ctx,
        "rope_theta": spec.rope_base, "rms_norm_eps": spec.rms_eps,
        "tie_word_embeddings": gemma, "torch_dtype": "float32",
    }
    if gemma:
        config.update(sliding_window=spec.sliding_window, rope_local_base_freq=10000.0,
                      query_pre_attn_scalar=spec.head_dim, hidden_activation="gelu_pytorch_tanh",
                      sliding_window_pattern=6)
    (d / "config.json").write_text(json.dumps(config, indent=2))
    (d / "impdiff_synthetic.json").write_text(json.dumps(asdict(spec), indent=2))
    return d


def make_model(arch: str, directory: str | Path, qtype: str = "F32", **overrides) -> Path:
    """Write (once) and return the GGUF of a preset synthetic model, quantised as asked.

    `arch` is a preset name: llama, qwen3, gemma3, or one of `synthetic_gemma4.PRESETS`
    (gemma4, gemma4-moe, qwen3moe, the E2B / 26B-A4B geometries, ...)."""
    if arch not in PRESETS:
        raise ValueError(f"unknown synthetic arch '{arch}' (known: {', '.join(PRESETS)})")
    spec = replace(PRESETS[arch], **overrides)
    directory = Path(directory)
    digest = hashlib.sha256(repr(spec).encode()).hexdigest()[:8]  # overrides get their own file
    tag = f"{arch}-{spec.n_layer}L-{spec.n_embd}d-s{spec.seed}-{digest}"
    f32 = directory / f"{tag}-F32.gguf"
    if not f32.exists():
        tmp = f32.with_suffix(f".{os.getpid()}.tmp")  # never leave a half-written model behind
        getattr(spec, "write_gguf", lambda path: write_gguf(spec, path))(tmp)
        os.replace(tmp, f32)
    if qtype == "F32":
        return f32
    dst = directory / f"{tag}-{qtype}.gguf"
    if not dst.exists():
        tmp = dst.with_suffix(f".{os.getpid()}.tmp")
        quantize_gguf(f32, tmp, qtype)
        os.replace(tmp, dst)
    return dst


SYNTHETIC_PREFIX = "synthetic:"


def resolve_synthetic(spec: str) -> Path:
    """'synthetic:PRESET[:QTYPE]' -> the GGUF, written once into $IMPDIFF_SYNTHETIC_DIR
    (default ~/.cache/impdiff/synthetic): lets recipes and --model name a synthetic model."""
    preset, _, qtype = spec[len(SYNTHETIC_PREFIX):].partition(":")
    if preset not in PRESETS:
        raise ValueError(f"--model {spec}: unknown synthetic preset '{preset}' (known: "
                         f"{', '.join(PRESETS)})")
    if (qtype or "F32") not in LLAMA_FTYPES:
        raise ValueError(f"--model {spec}: unknown quant type '{qtype}' (known: "
                         f"{', '.join(LLAMA_FTYPES)})")
    directory = Path(os.environ.get("IMPDIFF_SYNTHETIC_DIR")
                     or Path.home() / ".cache" / "impdiff" / "synthetic")
    return make_model(preset, directory, qtype or "F32")


def _register_gemma4_presets() -> None:
    from .synthetic_gemma4 import PRESETS as MORE

    PRESETS.update(MORE)


_register_gemma4_presets()
