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
    # Gemma 4 and MoE (the defaults keep llama, qwen3 and gemma3 as they were)
    swa_pattern_array: bool = False  # `attention.sliding_window_pattern` is a required bool array
    v_norm: bool = False  # V gets a per-head RMS norm without weight (Gemma 4)
    v_optional: bool = False  # a layer without attn_v uses K's projection as V (Gemma 4)
    out_scale: bool = False  # an optional per-layer `layer_output_scale` (Gemma 4)
    unscaled_attention: bool = False  # softmax(QK^T) without 1/sqrt(head_dim) (Gemma 4)
    rope_freqs_global_only: bool = False  # `rope_freqs` divides global layers' frequencies only
    moe: str = ""  # "": dense FFN; "routed": every FFN is routed experts (qwen3moe);
    #                "beside_mlp": layers with a router add experts beside the dense MLP (Gemma 4)
    default_logit_softcap: float = 0.0  # when `final_logit_softcapping` is absent
    required_keys: tuple[str, ...] = ()  # metadata llama.cpp requires (without the arch prefix)


ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": ArchSpec(rope_neox=False, qk_norm=False, post_norms=False, embed_scale=False,
                      ffn_act="silu"),
    "qwen3": ArchSpec(rope_neox=True, qk_norm=True, post_norms=False, embed_scale=False,
                      ffn_act="silu"),
    "gemma3": ArchSpec(rope_neox=True, qk_norm=True, post_norms=True, embed_scale=True,
                       ffn_act="gelu_tanh", swa_period=6),
    "qwen3moe": ArchSpec(rope_neox=True, qk_norm=True, post_norms=False, embed_scale=False,
                         ffn_act="silu", moe="routed",
                         required_keys=("expert_count", "expert_used_count")),
    "gemma4": ArchSpec(rope_neox=True, qk_norm=True, post_norms=True, embed_scale=True,
                       ffn_act="gelu_tanh", swa_pattern_array=True, v_norm=True,
                       v_optional=True, out_scale=True, unscaled_attention=True,
                       rope_freqs_global_only=True, moe="beside_mlp",
                       default_logit_softcap=30.0,
                       required_keys=("attention.sliding_window",
                                      "attention.sliding_window_pattern",
                                      "attention.key_length_swa", "attention.value_length_swa",
                                      "embedding_length_per_layer_input",
                                      "attention.layer_norm_rms_epsilon")),
}


@dataclass(frozen=True)
class LayerConfig:
    """One layer as llama.cpp's per-layer hparams describe it (n_head(il), n_rot(il), ...)."""

    swa: bool
    n_head: int
    n_head_kv: int
    head_dim: int
    n_rot: int
    rope_base: float
    rope_freq_scale: float
    rope_freqs: bool  # the `rope_freqs` tensor divides this layer's rope frequencies
    n_ff: int
    kv_layer: int  # the layer whose K/V cache this layer attends to (itself unless KV is shared)
    n_expert: int = 0  # 0: a dense FFN
    n_expert_used: int = 0
    n_ff_exp: int = 0

    @property
    def kind(self) -> str:
        return "sliding" if self.swa else "global"


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
    n_embd_per_layer: int = 0  # Gemma 4 E2B/E4B per-layer embeddings (0: none)
    # per-layer shapes; the scalar fields above are layer 0's head counts and FFN width and the
    # global (full-attention) head dim and rope. Left empty, they are all the scalar fields.
    layers: tuple[LayerConfig, ...] = field(default=(), repr=False)

    def __post_init__(self):
        if not self.layers:
            object.__setattr__(self, "layers", tuple(self._uniform_layer(i)
                                                     for i in range(self.n_layer)))

    def _uniform_layer(self, i: int) -> LayerConfig:
        swa = self.layer_is_swa(i)
        return LayerConfig(
            swa=swa, n_head=self.n_head, n_head_kv=self.n_head_kv, head_dim=self.head_dim,
            n_rot=self.n_rot, rope_base=self.rope_base_swa if swa else self.rope_base,
            rope_freq_scale=1.0 if swa else self.rope_freq_scale, rope_freqs=True,
            n_ff=self.n_ff, kv_layer=i)

    def layer_is_swa(self, layer: int) -> bool:
        return bool(self.is_swa) and self.is_swa[layer]

    @property
    def moe_layers(self) -> list[int]:
        return [i for i, layer in enumerate(self.layers) if layer.n_expert]

    @property
    def shared_kv_layers(self) -> list[int]:
        return [i for i, layer in enumerate(self.layers) if layer.kv_layer != i]

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

    for name in spec.required_keys:
        key(name, required=True)

    n_embd = int(key("embedding_length", required=True))
    n_layer = int(key("block_count", required=True))
    # llama.cpp's get_key_or_arr: one value for every layer, or an array of n_layer values
    n_head_l = _per_layer(gf, f"{arch}.attention.head_count",
                          key("attention.head_count", required=True), n_layer)
    n_head_kv_l = _per_layer(gf, f"{arch}.attention.head_count_kv",
                             key("attention.head_count_kv", list(n_head_l)), n_layer)
    n_ff_l = _per_layer(gf, f"{arch}.feed_forward_length",
                        key("feed_forward_length", required=True), n_layer)
    n_head, n_head_kv, n_ff = n_head_l[0], n_head_kv_l[0], n_ff_l[0]
    head_dim = _head_dim(gf, arch, "", key, n_embd // n_head)
    n_rot = _rope_dims(gf, arch, "", key, head_dim, head_dim)
    # sliding layers may have their own head size and rope dims (Gemma 4); llama.cpp defaults
    # both to the global values, the rope dims to the GLOBAL rope dims
    head_dim_swa = _head_dim(gf, arch, "_swa", key, head_dim)
    n_rot_swa = _rope_dims(gf, arch, "_swa", key, n_rot, head_dim_swa)

    scaling_type = key("rope.scaling.type", "linear")
    if scaling_type not in ("linear", "none"):
        raise ModelLoadError(f"{gf.path}: {arch}.rope.scaling.type='{scaling_type}' is not "
                             "supported (supported: linear, none)")
    factor = float(key("rope.scaling.factor", 0.0) or key("rope.scale_linear", 0.0) or 0.0)

    sliding_window = 0
    is_swa: tuple[bool, ...] = ()
    window = int(key("attention.sliding_window", 0) or 0)
    if spec.swa_pattern_array:
        pattern = key("attention.sliding_window_pattern")
        if not isinstance(pattern, list) or len(pattern) != n_layer:
            got = f"{len(pattern)} entries" if isinstance(pattern, list) else repr(pattern)
            raise ModelLoadError(f"{gf.path}: {arch}.attention.sliding_window_pattern must be an "
                                 f"array of {n_layer} booleans (one per layer), got {got}")
        is_swa = tuple(bool(p) for p in pattern)
        if any(is_swa) and window <= 0:
            raise ModelLoadError(f"{gf.path}: {arch}.attention.sliding_window={window}: sliding "
                                 "layers need a positive window")
        sliding_window = window
    elif spec.swa_period and window > 0:
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
    if spec.unscaled_attention:
        attn_scale = 1.0  # Gemma 4: the q/k norms take the place of 1/sqrt(head_dim)

    n_vocab = key("vocab_size")
    if n_vocab is None:
        tokens = gf.get("tokenizer.ggml.tokens")
        n_vocab = len(tokens) if tokens else gf.tensor("token_embd.weight").shape[0]

    rope_base = float(key("rope.freq_base", 10000.0))
    rope_base_swa = float(key("rope.freq_base_swa", spec.default_rope_base_swa))
    rope_freq_scale = 1.0 / factor if factor else 1.0
    kv_layer = _kv_sources(gf, arch, int(key("attention.shared_kv_layers", 0) or 0), is_swa,
                           n_layer)
    experts = _experts(gf, arch, spec, key, n_layer, n_ff_l)
    layers = []
    for i in range(n_layer):
        swa = bool(is_swa) and is_swa[i]
        layers.append(LayerConfig(
            swa=swa, n_head=n_head_l[i], n_head_kv=n_head_kv_l[i],
            head_dim=head_dim_swa if swa else head_dim, n_rot=n_rot_swa if swa else n_rot,
            rope_base=rope_base_swa if swa else rope_base,
            rope_freq_scale=1.0 if swa else rope_freq_scale,
            rope_freqs=not (swa and spec.rope_freqs_global_only), n_ff=n_ff_l[i],
            kv_layer=kv_layer[i], **experts[i]))

    softcap = key("final_logit_softcapping", spec.default_logit_softcap)
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
        rope_base=rope_base,
        rope_base_swa=rope_base_swa,
        rope_freq_scale=rope_freq_scale,
        n_rot=n_rot,
        sliding_window=sliding_window,
        is_swa=is_swa,
        attn_scale=attn_scale,
        final_logit_softcap=float(softcap or 0.0),
        spec=spec,
        n_embd_per_layer=int(key("embedding_length_per_layer_input", 0) or 0),
        layers=tuple(layers),
    )


def _per_layer(gf: GGUFFile, name: str, value, n_layer: int) -> tuple[int, ...]:
    """One value for all layers, or an array with one per layer (llama.cpp's get_key_or_arr)."""
    if isinstance(value, list):
        if len(value) != n_layer:
            raise ModelLoadError(f"{gf.path}: {name} has {len(value)} entries, expected one per "
                                 f"layer ({n_layer})")
        return tuple(int(v) for v in value)
    return (int(value),) * n_layer


def _head_dim(gf: GGUFFile, arch: str, suffix: str, key, default: int) -> int:
    """attention.key_length{suffix}; value_length{suffix} must be equal (as llama.cpp's gemma4
    demands; the engine's attention assumes it for every architecture)."""
    k = int(key(f"attention.key_length{suffix}", default))
    v = int(key(f"attention.value_length{suffix}", k))
    if k != v:
        raise ModelLoadError(f"{gf.path}: {arch}.attention.value_length{suffix}={v} differs from "
                             f"{arch}.attention.key_length{suffix}={k}; the engine expects equal "
                             "K and V head sizes")
    if k <= 0:
        raise ModelLoadError(f"{gf.path}: {arch}.attention.key_length{suffix}={k} must be positive")
    return k


def _rope_dims(gf: GGUFFile, arch: str, suffix: str, key, default: int, head_dim: int) -> int:
    n_rot = int(key(f"rope.dimension_count{suffix}", default))
    if n_rot > head_dim or n_rot % 2 or n_rot < 0:
        raise ModelLoadError(f"{gf.path}: {arch}.rope.dimension_count{suffix}={n_rot} must be "
                             f"even and at most the head size {head_dim}")
    return n_rot


def _kv_sources(gf: GGUFFile, arch: str, n_shared: int, is_swa: tuple[bool, ...],
                n_layer: int) -> list[int]:
    """The layer whose KV cache each layer reads. Gemma 4's last `shared_kv_layers` layers keep
    no cache: as llama.cpp's layer_reuse_cb, a sliding one reads layer n_kv - 2, a global one
    layer n_kv - 1 (n_kv = n_layer - shared), which must be of the same kind."""
    if n_shared == 0:
        return list(range(n_layer))
    name = f"{gf.path}: {arch}.attention.shared_kv_layers={n_shared}"
    n_kv = n_layer - n_shared
    if n_shared < 0 or n_kv < 2:
        raise ModelLoadError(f"{name}: must leave at least 2 of the {n_layer} layers with their "
                             "own KV cache")
    swa = [bool(is_swa) and is_swa[i] for i in range(n_layer)]
    out = list(range(n_kv))
    for i in range(n_kv, n_layer):
        src = n_kv - (2 if swa[i] else 1)
        if swa[src] != swa[i]:
            raise ModelLoadError(
                f"{name}: {'sliding' if swa[i] else 'global'} layer {i} would read the KV cache "
                f"of layer {src}, which is {'sliding' if swa[src] else 'global'} (llama.cpp aborts "
                f"on such a file: layer {n_kv - 1} must be global and layer {n_kv - 2} sliding)")
        out.append(src)
    return out


def _experts(gf: GGUFFile, arch: str, spec: ArchSpec, key, n_layer: int,
             n_ff_l: tuple[int, ...]) -> list[dict]:
    """Per-layer expert counts. qwen3moe routes every layer; Gemma 4 the layers that have a
    router tensor (`blk.N.ffn_gate_inp.weight`), as llama.cpp decides it."""
    dense = [{} for _ in range(n_layer)]
    if not spec.moe:
        return dense
    n_expert = int(key("expert_count", 0) or 0)
    used = _per_layer(gf, f"{arch}.expert_used_count", key("expert_used_count", 0) or 0, n_layer)
    ff_exp = _per_layer(gf, f"{arch}.expert_feed_forward_length",
                        key("expert_feed_forward_length", 0) or 0, n_layer)
    out = []
    for i in range(n_layer):
        routed = spec.moe == "routed" or f"blk.{i}.ffn_gate_inp.weight" in gf.tensors
        if not routed:
            out.append({})
            continue
        where = f"{gf.path}: layer {i} routes to experts, but"
        if n_expert <= 0:
            raise ModelLoadError(f"{where} {arch}.expert_count is {n_expert}")
        if not 0 < used[i] <= n_expert:
            raise ModelLoadError(f"{where} {arch}.expert_used_count={used[i]} is not in 1.."
                                 f"{n_expert} ({arch}.expert_count)")
        n_ff_exp = ff_exp[i] or (n_ff_l[i] // used[i] if spec.moe == "routed" else 0)
        if n_ff_exp <= 0:
            raise ModelLoadError(f"{where} {arch}.expert_feed_forward_length is missing")
        out.append(dict(n_expert=n_expert, n_expert_used=used[i], n_ff_exp=n_ff_exp))
    return out
