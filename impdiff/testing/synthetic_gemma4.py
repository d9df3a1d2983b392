"""Seeded Gemma 4 and Qwen3-MoE models that llama.cpp loads, written with the metadata keys and
tensor names of the published GGUFs (as the vendored converter writes them).

Two sizes of each: tiny ones for the tests, and ones with the real layer geometry of Gemma 4
E2B and 26B-A4B (layer count, sliding/global pattern, head dims 256/512, window 512/1024,
proportional rope, KV sharing, K = V on global layers, per-layer embeddings) but a hidden size
of 256, fewer heads and fewer, narrower experts, so that brackets run on a CPU.

Weights are scaled so activations stay O(1) and nothing saturates: the q/k norm weights are
about head_dim^(-1/4), which keeps Gemma 4's unscaled attention logits (no 1/sqrt(head_dim))
of order one, and the router's input scale makes router logits of order one.
`impdiff.testing.synthetic.make_model` writes (and quantises) them by preset name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


def swa_every(n_layer: int, period: int) -> tuple[bool, ...]:
    """Sliding pattern with the last layer of each `period` global (True = sliding)."""
    return tuple(i % period < period - 1 for i in range(n_layer))


@dataclass(frozen=True)
class Gemma4Spec:
    arch: str = "gemma4"
    n_vocab: int = 512
    n_embd: int = 256
    n_layer: int = 6
    n_head: int = 4
    n_head_kv: int = 2  # sliding layers
    n_head_kv_global: int = 1
    head_dim: int = 64  # sliding layers: key_length_swa
    head_dim_global: int = 128  # key_length
    n_ff: int = 512
    double_wide_shared: bool = True  # E2B: the KV-shared layers' FFN is twice as wide
    swa_pattern: tuple[bool, ...] = (True, True, True, False, True, False)
    sliding_window: int = 32
    rope_base: float = 1_000_000.0
    rope_base_swa: float = 10_000.0
    partial_rotary_global: float = 0.25  # proportional rope: rotated share of the global head
    n_embd_per_layer: int = 32  # 0: no per-layer embeddings
    shared_kv_layers: int = 2
    k_eq_v_global: bool = False  # global layers without attn_v (26B-A4B, 31B)
    n_expert: int = 0  # 0: dense; else every layer is a MoE layer (26B-A4B)
    n_expert_used: int = 0
    n_ff_exp: int = 0
    fused_gate_up: bool = True  # ffn_gate_up_exps, or ffn_gate_exps + ffn_up_exps
    softcap: float = 30.0
    layer_output_scale: bool = True
    # each layer's branches (after their post norms) at this size relative to the residual:
    # trained models update the residual gently; random full-size updates make a deep model
    # chaotic (rounding noise then grows ~10% a layer, and a 30-layer Q8_0 model drifts apart)
    branch_scale: float = 1.0
    n_ctx: int = 8192
    rms_eps: float = 1e-6
    seed: int = 0

    def write_gguf(self, path: str | Path) -> Path:
        return _write(self, path, _gemma4_metadata, _gemma4_weights)


@dataclass(frozen=True)
class Qwen3MoESpec:
    arch: str = "qwen3moe"
    n_vocab: int = 512
    n_embd: int = 256
    n_layer: int = 2
    n_head: int = 4
    n_head_kv: int = 2
    head_dim: int = 64
    n_ff: int = 512
    n_expert: int = 8
    n_expert_used: int = 2
    n_ff_exp: int = 128
    rope_base: float = 1_000_000.0
    n_ctx: int = 8192
    rms_eps: float = 1e-6
    seed: int = 0

    def write_gguf(self, path: str | Path) -> Path:
        return _write(self, path, _qwen3moe_metadata, _qwen3moe_weights)


PRESETS: dict[str, Gemma4Spec | Qwen3MoESpec] = {
    # tiny: per-layer embeddings, 2 KV-shared layers (layer 3 global, 2 sliding as llama.cpp
    # requires), a double-wide FFN on them
    "gemma4": Gemma4Spec(),
    # tiny MoE: dense MLP beside 8 experts (top 2), K = V on global layers, fused gate/up
    "gemma4-moe": Gemma4Spec(n_embd_per_layer=0, shared_kv_layers=0, double_wide_shared=False,
                             k_eq_v_global=True, n_expert=8, n_expert_used=2, n_ff_exp=128,
                             n_ff=256),
    # the same with separate gate and up expert tensors
    "gemma4-moe-split": Gemma4Spec(n_embd_per_layer=0, shared_kv_layers=0,
                                   double_wide_shared=False, k_eq_v_global=True, n_expert=8,
                                   n_expert_used=2, n_ff_exp=128, n_ff=256, fused_gate_up=False),
    "qwen3moe": Qwen3MoESpec(),
    # E2B layer geometry: 35 layers, 4 sliding : 1 global, window 512, head dim 256 / 512,
    # 1 KV head, per-layer input 256, 20 KV-shared layers with a double-wide FFN; branches at
    # 0.3 of the residual (see branch_scale) so that 35 layers do not amplify rounding noise
    "gemma4-e2b": Gemma4Spec(n_layer=35, n_head=4, n_head_kv=1, n_head_kv_global=1,
                             head_dim=256, head_dim_global=512, n_ff=512,
                             swa_pattern=swa_every(35, 5), sliding_window=512,
                             n_embd_per_layer=256, shared_kv_layers=20, n_vocab=1024,
                             branch_scale=0.3),
    # 26B-A4B layer geometry: 30 layers, 5 sliding : 1 global, window 1024, head dim 256 / 512,
    # KV heads 2 sliding / 1 global (16/8/2 in the real model), K = V on global layers, a dense
    # MLP beside 8 experts (top 2) on every layer
    "gemma4-26b-a4b": Gemma4Spec(n_layer=30, n_head=4, n_head_kv=2, n_head_kv_global=1,
                                 head_dim=256, head_dim_global=512, n_ff=512,
                                 swa_pattern=swa_every(30, 6), sliding_window=1024,
                                 n_embd_per_layer=0, shared_kv_layers=0,
                                 double_wide_shared=False, k_eq_v_global=True, n_expert=8,
                                 n_expert_used=2, n_ff_exp=256, n_vocab=1024,
                                 branch_scale=0.3),
}


# --- writing ----------------------------------------------------------------------------------

class _Rand:
    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def mat(self, *shape: int, scale: float = 1.0) -> np.ndarray:
        """[..., out, in] with rows of norm ~scale (std 1/sqrt(in))."""
        return (self.rng.standard_normal(shape) * scale / np.sqrt(shape[-1])).astype(np.float32)

    def norm(self, n: int, scale: float = 1.0) -> np.ndarray:
        """A norm weight as Gemma 4 GGUFs store it (w itself, not 1 + w)."""
        return ((1.0 + 0.1 * self.rng.standard_normal(n)) * scale).astype(np.float32)

    def normal(self, *shape: int, scale: float = 1.0) -> np.ndarray:
        return (self.rng.standard_normal(shape) * scale).astype(np.float32)


def _write(spec, path: str | Path, metadata, weights) -> Path:
    import gguf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(path), spec.arch)
    w.add_name(f"impdiff-synthetic-{spec.arch}")
    metadata(spec, w)
    w.add_file_type(0)
    w.add_tokenizer_model("none")
    for name, t in weights(spec).items():
        w.add_tensor(name, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _layout(spec: Gemma4Spec) -> list[dict]:
    """Per-layer facts: sliding?, head dim, KV heads, own KV cache?, V tensor?, FFN width."""
    n_kv = spec.n_layer - spec.shared_kv_layers
    out = []
    for i, swa in enumerate(spec.swa_pattern):
        shared = i >= n_kv
        out.append(dict(
            swa=swa, d=spec.head_dim if swa else spec.head_dim_global,
            kv=spec.n_head_kv if swa else spec.n_head_kv_global, own_kv=not shared,
            has_v=not shared and (swa or not spec.k_eq_v_global),
            n_ff=spec.n_ff * (2 if shared and spec.double_wide_shared else 1)))
    return out


def _gemma4_metadata(spec: Gemma4Spec, w) -> None:
    if len(spec.swa_pattern) != spec.n_layer:
        raise ValueError(f"swa_pattern has {len(spec.swa_pattern)} entries for {spec.n_layer} "
                         "layers")
    layers = _layout(spec)
    w.add_context_length(spec.n_ctx)
    w.add_embedding_length(spec.n_embd)
    w.add_block_count(spec.n_layer)
    ffs = [layer["n_ff"] for layer in layers]
    w.add_feed_forward_length(ffs if len(set(ffs)) > 1 else ffs[0])
    w.add_head_count(spec.n_head)
    kvs = [layer["kv"] for layer in layers]
    w.add_head_count_kv(kvs if len(set(kvs)) > 1 else kvs[0])
    w.add_key_length(spec.head_dim_global)
    w.add_value_length(spec.head_dim_global)
    w.add_key_length_swa(spec.head_dim)
    w.add_value_length_swa(spec.head_dim)
    w.add_rope_dimension_count(spec.head_dim_global)  # "proportional": rope_freqs does the rest
    w.add_rope_dimension_count_swa(spec.head_dim)
    w.add_rope_freq_base(spec.rope_base)
    w.add_rope_freq_base_swa(spec.rope_base_swa)
    w.add_layer_norm_rms_eps(spec.rms_eps)
    w.add_sliding_window(spec.sliding_window)
    w.add_sliding_window_pattern(list(spec.swa_pattern))
    w.add_shared_kv_layers(spec.shared_kv_layers)
    w.add_embedding_length_per_layer_input(spec.n_embd_per_layer)
    w.add_final_logit_softcapping(spec.softcap)
    w.add_vocab_size(spec.n_vocab)
    if spec.n_expert:
        w.add_expert_count(spec.n_expert)
        w.add_expert_used_count(spec.n_expert_used)
        w.add_expert_feed_forward_length(spec.n_ff_exp)


def _gemma4_weights(spec: Gemma4Spec) -> dict[str, np.ndarray]:
    r, n, L = _Rand(spec.seed), spec.n_embd, spec.n_layer
    pl = spec.n_embd_per_layer
    w = {"token_embd.weight": r.normal(spec.n_vocab, n, scale=0.05)}
    rotated = int(spec.head_dim_global * spec.partial_rotary_global / 2)
    unrotated = spec.head_dim_global // 2 - rotated
    w["rope_freqs.weight"] = np.array([1.0] * rotated + [1e30] * unrotated, dtype=np.float32)
    if pl:
        w["per_layer_token_embd.weight"] = r.normal(spec.n_vocab, L * pl, scale=0.05)
        w["per_layer_model_proj.weight"] = r.mat(L * pl, n)
        w["per_layer_proj_norm.weight"] = r.norm(pl)
    for i, lay in enumerate(_layout(spec)):
        p, d, kv = f"blk.{i}.", lay["d"], lay["kv"]
        w[p + "attn_norm.weight"] = r.norm(n)
        w[p + "attn_q.weight"] = r.mat(spec.n_head * d, n)
        w[p + "attn_q_norm.weight"] = r.norm(d, d ** -0.25)
        if lay["own_kv"]:
            w[p + "attn_k.weight"] = r.mat(kv * d, n)
            w[p + "attn_k_norm.weight"] = r.norm(d, d ** -0.25)
            if lay["has_v"]:
                w[p + "attn_v.weight"] = r.mat(kv * d, n)
        w[p + "attn_output.weight"] = r.mat(n, spec.n_head * d)
        w[p + "post_attention_norm.weight"] = r.norm(n, spec.branch_scale)
        w[p + "ffn_norm.weight"] = r.norm(n)
        w[p + "ffn_gate.weight"] = r.mat(lay["n_ff"], n)
        w[p + "ffn_up.weight"] = r.mat(lay["n_ff"], n)
        w[p + "ffn_down.weight"] = r.mat(n, lay["n_ff"])
        w[p + "post_ffw_norm.weight"] = r.norm(n, spec.branch_scale)
        if spec.n_expert:
            E, f = spec.n_expert, spec.n_ff_exp
            w[p + "ffn_gate_inp.weight"] = r.mat(E, n, scale=2.0)
            # the router's input scale varies per dimension, so dropping it changes the choice
            w[p + "ffn_gate_inp.scale"] = (np.sqrt(n) * (1 + 0.5 * r.normal(n))).astype(np.float32)
            w[p + "pre_ffw_norm_2.weight"] = r.norm(n)
            w[p + "post_ffw_norm_1.weight"] = r.norm(n)
            w[p + "post_ffw_norm_2.weight"] = r.norm(n)
            if spec.fused_gate_up:
                w[p + "ffn_gate_up_exps.weight"] = r.mat(E, 2 * f, n)
            else:
                w[p + "ffn_gate_exps.weight"] = r.mat(E, f, n)
                w[p + "ffn_up_exps.weight"] = r.mat(E, f, n)
            w[p + "ffn_down_exps.weight"] = r.mat(E, n, f)
            w[p + "ffn_down_exps.scale"] = r.norm(E)
        if pl:
            w[p + "inp_gate.weight"] = r.mat(pl, n)
            w[p + "proj.weight"] = r.mat(n, pl)
            w[p + "post_norm.weight"] = r.norm(n, spec.branch_scale)
        if spec.layer_output_scale:
            w[p + "layer_output_scale.weight"] = (0.8 + 0.2 * r.rng.random(1)).astype(np.float32)
    w["output_norm.weight"] = r.norm(n)
    return w  # the lm head is tied to token_embd, as in the published files


def _qwen3moe_metadata(spec: Qwen3MoESpec, w) -> None:
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
    w.add_expert_count(spec.n_expert)
    w.add_expert_used_count(spec.n_expert_used)
    w.add_expert_feed_forward_length(spec.n_ff_exp)
    w.add_vocab_size(spec.n_vocab)


def _qwen3moe_weights(spec: Qwen3MoESpec) -> dict[str, np.ndarray]:
    r, n, d = _Rand(spec.seed), spec.n_embd, spec.head_dim
    E, f = spec.n_expert, spec.n_ff_exp
    w = {"token_embd.weight": r.normal(spec.n_vocab, n)}
    for i in range(spec.n_layer):
        p = f"blk.{i}."
        w[p + "attn_norm.weight"] = r.norm(n)
        w[p + "attn_q.weight"] = r.mat(spec.n_head * d, n)
        w[p + "attn_k.weight"] = r.mat(spec.n_head_kv * d, n)
        w[p + "attn_v.weight"] = r.mat(spec.n_head_kv * d, n)
        w[p + "attn_output.weight"] = r.mat(n, spec.n_head * d)
        w[p + "attn_q_norm.weight"] = r.norm(d)
        w[p + "attn_k_norm.weight"] = r.norm(d)
        w[p + "ffn_norm.weight"] = r.norm(n)
        w[p + "ffn_gate_inp.weight"] = r.mat(E, n, scale=2.0)
        w[p + "ffn_gate_exps.weight"] = r.mat(E, f, n)
        w[p + "ffn_up_exps.weight"] = r.mat(E, f, n)
        w[p + "ffn_down_exps.weight"] = r.mat(E, n, f)
    w["output_norm.weight"] = r.norm(n)
    w["output.weight"] = r.mat(spec.n_vocab, n)
    return w
