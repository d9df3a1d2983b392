"""Model hyper-parameters, read from GGUF metadata the way llama.cpp reads them.

One `ModelConfig` describes every supported architecture; what differs between architectures
is kept as data in `ARCHITECTURES` (one `ArchSpec` each), not as branches through the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .errors import ModelLoadError, UnsupportedArchitectureError
from .gguf_file import GGUFFile


@dataclass(frozen=True)
class ArchSpec:
    """What an architecture does differently from plain Llama."""

    rope_neox: bool  # rotate pairs (i, i + d/2) instead of adjacent pairs (2i, 2i+1)
    qk_norm: bool  # per-head RMS norm on Q and K before rope
    post_norms: bool  # extra RMS norms after attention and after the FFN (Gemma)
    embed_scale: bool  # multiply embeddings by sqrt(n_embd) (Gemma)
    ffn_act: str  # "silu" or "gelu_tanh"
    swa_period: int = 0  # every `swa_period`-th layer is global, the rest sliding (0: no SWA)
    default_rope_base_swa: float = 10000.0


ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": ArchSpec(rope_neox=False, qk_norm=False, post_norms=False, embed_scale=False,
                      ffn_act="silu"),
    "qwen3": ArchSpec(rope_neox=True, qk_norm=True, post_norms=False, embed_scale=False,
                      ffn_act="silu"),
    "gemma3": ArchSpec(rope_neox=True, qk_norm=True, post_norms=True, embed_scale=True,
                       ffn_act="gelu_tanh", swa_period=6),
}


@dataclass(frozen=True)
class ModelConfig:
    arch: str
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    rms_eps: float
    n_ctx_train: int
    rope_base: float
    rope_base_swa: float
    rope_freq_scale: float  # 1 / linear rope scaling factor, global layers only
    n_rot: int
    sliding_window: int = 0  # 0: no sliding-window layers
    is_swa: tuple[bool, ...] = ()
    attn_scale: float = 1.0  # applied to Q before QK^T
    final_logit_softcap: float = 0.0
    spec: ArchSpec = field(default=ARCHITECTURES["llama"], repr=False)

    def layer_is_swa(self, layer: int) -> bool:
        return bool(self.is_swa) and self.is_swa[layer]

    @property
    def global_layers(self) -> list[int]:
        return [i for i in range(self.n_layer) if not self.layer_is_swa(i)]


def config_from_gguf(gf: GGUFFile) -> ModelConfig:
    arch = gf.architecture
    if arch not in ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"{gf.path}: architecture '{arch}' is not supported "
            f"(supported: {', '.join(sorted(ARCHITECTURES))})"
        )
    spec = ARCHITECTURES[arch]

    def key(name: str, default=None, required: bool = False):
        full = f"{arch}.{name}"
        if required:
            return gf.require(full)
        return gf.get(full, default)

    n_embd = int(key("embedding_length", required=True))
    n_layer = int(key("block_count", required=True))
    n_head = _scalar(gf, f"{arch}.attention.head_count", key("attention.head_count", required=True))
    n_head_kv = _scalar(gf, f"{arch}.attention.head_count_kv",
                        key("attention.head_count_kv", n_head))
    n_ff = _scalar(gf, f"{arch}.feed_forward_length", key("feed_forward_length", required=True))
    head_dim = int(key("attention.key_length", n_embd // n_head))
    if int(key("attention.value_length", head_dim)) != head_dim:
        raise ModelLoadError(f"{gf.path}: {arch}.attention.value_length differs from key_length; "
                             "the engine expects equal K and V head sizes")
    n_rot = int(key("rope.dimension_count", head_dim))
    if n_rot > head_dim or n_rot % 2:
        raise ModelLoadError(f"{gf.path}: {arch}.rope.dimension_count={n_rot} must be even and "
                             f"at most the head size {head_dim}")

    scaling_type = key("rope.scaling.type", "linear")
    if scaling_type not in ("linear", "none"):
        raise ModelLoadError(f"{gf.path}: {arch}.rope.scaling.type='{scaling_type}' is not "
                             "supported (supported: linear, none)")
    factor = float(key("rope.scaling.factor", 0.0) or key("rope.scale_linear", 0.0) or 0.0)

    sliding_window = 0
    is_swa: tuple[bool, ...] = ()
    window = int(key("attention.sliding_window", 0) or 0)
    if spec.swa_period and window > 0:
        sliding_window = window
        pattern = key("attention.sliding_window_pattern")
        if isinstance(pattern, list):
            if len(pattern) != n_layer:
                raise ModelLoadError(f"{gf.path}: {arch}.attention.sliding_window_pattern has "
                                     f"{len(pattern)} entries, expected {n_layer}")
            is_swa = tuple(bool(p) for p in pattern)
        else:
            period = int(pattern) if pattern else spec.swa_period
            # llama.cpp's set_swa_pattern: the last layer of each period is global.
            is_swa = tuple(period == 0 or (i % period < period - 1) for i in range(n_layer))

    attn_scale = 1.0 / math.sqrt(head_dim)
    if arch == "gemma3" and n_layer == 62:
        # Gemma 3 27B scales queries by 1/sqrt(n_embd / n_head) (llama.cpp, gemma_pytorch).
        attn_scale = 1.0 / math.sqrt(n_embd / n_head)

    n_vocab = key("vocab_size")
    if n_vocab is None:
        tokens = gf.get("tokenizer.ggml.tokens")
        n_vocab = len(tokens) if tokens else gf.tensor("token_embd.weight").shape[0]

    return ModelConfig(
        arch=arch,
        n_vocab=int(n_vocab),
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim=head_dim,
        n_ff=n_ff,
        rms_eps=float(key("attention.layer_norm_rms_epsilon", required=True)),
        n_ctx_train=int(key("context_length", 4096)),
        rope_base=float(key("rope.freq_base", 10000.0)),
        rope_base_swa=float(key("rope.freq_base_swa", spec.default_rope_base_swa)),
        rope_freq_scale=1.0 / factor if factor else 1.0,
        n_rot=n_rot,
        sliding_window=sliding_window,
        is_swa=is_swa,
        attn_scale=attn_scale,
        final_logit_softcap=float(key("final_logit_softcapping", 0.0) or 0.0),
        spec=spec,
    )


def _scalar(gf: GGUFFile, name: str, value) -> int:
    """Per-layer arrays are allowed by GGUF; the engine supports them only when uniform."""
    if isinstance(value, list):
        if len(set(value)) != 1:
            raise ModelLoadError(f"{gf.path}: {name} varies per layer ({value}); this "
                                 "architecture expects one value")
        value = value[0]
    return int(value)
