"""The transformer, top to bottom, as llama.cpp computes it for llama, qwen3, qwen3moe, gemma3
and gemma4.

This is the reference: plain torch in float32, one function per op, nothing fused. Every
intermediate passes through `emit(name, layer, x)`, the tap point: with no tap function it is a
single `is None` test; a tap function may record the tensor, or return a replacement to patch
the activation (used by the debugger's substitution check).

Tap names and layouts are those of `impdiff.taps` (`[position, hidden]`,
`[position, head, head_dim]`, `[position, features]`).

What differs between architectures is data: `ArchSpec` flags, and per-layer shapes in
`ModelConfig.layers` (Gemma 4 gives sliding and global layers their own head sizes, rope and
head counts, lets its last layers share earlier layers' KV cache, and mixes dense and MoE FFNs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .config import ModelConfig
from .errors import ModelLoadError
from .faults import FaultSet

Tensor = torch.Tensor
TapFn = Callable[[str, int, Tensor], Optional[Tensor]]
GLOBAL = -1


def emit(tap: TapFn | None, name: str, layer: int, x: Tensor) -> Tensor:
    if tap is None:
        return x
    out = tap(name, layer, x)
    return x if out is None else out


# --- ops --------------------------------------------------------------------------------------

def rms_norm(x: Tensor, weight: Tensor | None, eps: float) -> Tensor:
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return y if weight is None else y * weight


def rope_angles(positions: Tensor, n_rot: int, base: float, freq_scale: float,
                freq_factors: Tensor | None) -> tuple[Tensor, Tensor]:
    """cos/sin of theta[p, i] = p * freq_scale * base^(-2i/n_rot) / factor[i], shape [T, n_rot/2].

    Computed in float64: the reference should not add its own rounding at long positions.
    """
    inv_freq = base ** (-torch.arange(0, n_rot, 2, dtype=torch.float64, device=positions.device)
                        / n_rot)
    if freq_factors is not None:
        inv_freq = inv_freq / freq_factors.to(torch.float64)
    theta = positions.to(torch.float64)[:, None] * freq_scale * inv_freq[None, :]
    return theta.cos().float(), theta.sin().float()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor, n_rot: int, neox: bool) -> Tensor:
    """Rotate the first n_rot dims of each head of x [T, H, D].

    NEOX pairs dim i with i + n_rot/2; the original (GPT-J) layout pairs 2i with 2i+1, which is
    what llama-arch GGUFs expect because the converter permuted Q/K rows for it.
    """
    half = n_rot // 2
    rot, rest = x[..., :n_rot], x[..., n_rot:]
    if neox:
        x1, x2 = rot[..., :half], rot[..., half:]
    else:
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
    c, s = cos[:, None, :], sin[:, None, :]
    y1, y2 = x1 * c - x2 * s, x1 * s + x2 * c
    out = torch.cat([y1, y2], -1) if neox else torch.stack([y1, y2], -1).flatten(-2)
    return torch.cat([out, rest], -1)


def attention_mask(q_pos: Tensor, k_pos: Tensor, window: int, window_inclusive: bool) -> Tensor:
    """Boolean [T, S], True where query q may attend key k.

    Causal; with a window, llama.cpp masks p_q - p_k >= window (the window counts the query).
    """
    allowed = k_pos[None, :] <= q_pos[:, None]
    if window:
        dist = q_pos[:, None] - k_pos[None, :]
        allowed &= (dist <= window) if window_inclusive else (dist < window)
    return allowed


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float) -> Tensor:
    """softmax(scale * q k^T) v with grouped K/V heads. q [T,H,D], k/v [S,Hkv,D] -> [T,H,D].

    Written out rather than through F.scaled_dot_product_attention: the reference should show
    the math, and on the CPU SDPA's masked GQA path took 35 ms for a one-token decode step.
    """
    group = q.shape[1] // k.shape[1]
    if group > 1:
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = torch.einsum("thd,shd->hts", q, k) * scale
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.einsum("hts,shd->thd", torch.softmax(scores, dim=-1), v)


def ffn_activation(name: str, x: Tensor) -> Tensor:
    if name == "silu":
        return F.silu(x)
    return F.gelu(x, approximate="tanh")


def softcap(x: Tensor, cap: float) -> Tensor:
    return torch.tanh(x / cap) * cap


def route(logits: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The router, as llama.cpp's build_moe_ffn with softmax gating: probabilities over all
    experts and the k most probable, in descending order (as ggml_argsort_top_k)."""
    probs = torch.softmax(logits, dim=-1)
    return probs, probs.topk(k, dim=-1).indices


def expert_weights(probs: Tensor, ids: Tensor) -> Tensor:
    """The picked experts' probabilities renormalised to sum 1 (llama.cpp's norm_w, with its
    clamp of the sum to the smallest normal F16)."""
    w = probs.gather(-1, ids)
    return w / w.sum(-1, keepdim=True).clamp(min=6.103515625e-5)


def experts_ffn(x: Tensor, ids: Tensor, weights: Tensor, gate: Tensor, up: Tensor, down: Tensor,
                down_scale: Tensor | None, act: str) -> Tensor:
    """sum over j of weights[t, j] * down[e] @ (act(gate[e] @ x_t) * up[e] @ x_t) * down_scale[e],
    e = ids[t, j]. Expert weights are [E, out, in]; one pass per expert that any token picked,
    the slots summed in order (as llama.cpp adds its expert views)."""
    slots = x.new_zeros(ids.shape[0], ids.shape[1], x.shape[1])
    for e in ids.unique().tolist():
        rows, slot = (ids == e).nonzero(as_tuple=True)
        h = x[rows]
        y = (ffn_activation(act, h @ gate[e].T) * (h @ up[e].T)) @ down[e].T
        if down_scale is not None:
            y = y * down_scale[e]
        slots[rows, slot] = y * weights[rows, slot, None]
    out = slots[:, 0]
    for j in range(1, slots.shape[1]):
        out = out + slots[:, j]
    return out


# --- weights ----------------------------------------------------------------------------------

@dataclass
class LayerWeights:
    attn_norm: Tensor
    wq: Tensor
    wo: Tensor
    ffn_norm: Tensor
    wk: Tensor | None = None  # None: a layer that reads another layer's KV cache (Gemma 4)
    wv: Tensor | None = None  # None: V is K's projection (Gemma 4), or a KV-shared layer
    q_norm: Tensor | None = None
    k_norm: Tensor | None = None
    attn_post_norm: Tensor | None = None
    w_gate: Tensor | None = None  # the dense MLP (absent in qwen3moe's all-expert layers)
    w_up: Tensor | None = None
    w_down: Tensor | None = None
    ffn_post_norm: Tensor | None = None
    # routed experts: weights [E, out, in]
    router: Tensor | None = None  # ffn_gate_inp [E, n_embd]
    router_scale: Tensor | None = None  # Gemma 4: per-dimension scale of the router's input
    exp_gate: Tensor | None = None
    exp_up: Tensor | None = None
    exp_down: Tensor | None = None
    exp_down_scale: Tensor | None = None  # Gemma 4: per-expert output scale
    ffn_norm_2: Tensor | None = None  # Gemma 4 MoE layers: the experts' own pre/post norms
    mlp_post_norm: Tensor | None = None
    moe_post_norm: Tensor | None = None
    # Gemma 4 per-layer embeddings (E2B/E4B)
    ple_gate: Tensor | None = None
    ple_proj: Tensor | None = None
    ple_post_norm: Tensor | None = None
    out_scale: Tensor | None = None  # Gemma 4: the layer output's scalar


LAYER_TENSORS = {
    # field: (GGUF name after "blk.N.", when a layer has it: see Transformer._presence)
    "attn_norm": ("attn_norm.weight", "always"), "wq": ("attn_q.weight", "always"),
    "wk": ("attn_k.weight", "own_kv"), "wv": ("attn_v.weight", "own_v"),
    "wo": ("attn_output.weight", "always"), "q_norm": ("attn_q_norm.weight", "qk_norm"),
    "k_norm": ("attn_k_norm.weight", "k_norm"),
    "attn_post_norm": ("post_attention_norm.weight", "post_norms"),
    "ffn_norm": ("ffn_norm.weight", "always"), "w_gate": ("ffn_gate.weight", "dense_mlp"),
    "w_up": ("ffn_up.weight", "dense_mlp"), "w_down": ("ffn_down.weight", "dense_mlp"),
    "ffn_post_norm": ("post_ffw_norm.weight", "post_norms"),
    "router": ("ffn_gate_inp.weight", "moe"), "router_scale": ("ffn_gate_inp.scale", "beside"),
    "exp_gate_up": ("ffn_gate_up_exps.weight", "fused_gate_up"),
    "exp_gate": ("ffn_gate_exps.weight", "split_gate_up"),
    "exp_up": ("ffn_up_exps.weight", "split_gate_up"), "exp_down": ("ffn_down_exps.weight", "moe"),
    "exp_down_scale": ("ffn_down_exps.scale", "moe_optional"),
    "ffn_norm_2": ("pre_ffw_norm_2.weight", "beside"),
    "mlp_post_norm": ("post_ffw_norm_1.weight", "beside"),
    "moe_post_norm": ("post_ffw_norm_2.weight", "beside"),
    "ple_gate": ("inp_gate.weight", "ple"), "ple_proj": ("proj.weight", "ple"),
    "ple_post_norm": ("post_norm.weight", "ple"),
    "out_scale": ("layer_output_scale.weight", "out_scale"),
}

# NVFP4-converted GGUFs carry a ".scale" beside some weights (shape [1], or [E] for experts);
# llama.cpp multiplies the matmul's output by it, which is the same as scaling the weight.
FOLDED_SCALES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down",
                 "ffn_gate_exps", "ffn_up_exps")


def fold_weight_scales(weights: dict[str, Tensor]) -> dict[str, Tensor]:
    out = dict(weights)
    for name, s in weights.items():
        parts = name.split(".")
        if len(parts) == 4 and parts[0] == "blk" and parts[3] == "scale" \
                and parts[2] in FOLDED_SCALES and f"blk.{parts[1]}.{parts[2]}.weight" in out:
            base = f"blk.{parts[1]}.{parts[2]}.weight"
            w = out[base]
            out[base] = w * (s.reshape(-1, 1, 1) if w.dim() == 3 else s.reshape(()))
    return out


def expected_shapes(cfg: ModelConfig, layer: int = 0) -> dict[str, tuple[int, ...]]:
    """Shapes (torch order) of layer `layer`'s weights, by GGUF name ("attn_q", ...)."""
    L, n = cfg.layers[layer], cfg.n_embd
    q, kv = L.n_head * L.head_dim, L.n_head_kv * L.head_dim
    shapes = {
        "attn_norm": (n,), "attn_q": (q, n), "attn_k": (kv, n),
        "attn_v": (kv, n), "attn_output": (n, q), "ffn_norm": (n,),
        "ffn_gate": (L.n_ff, n), "ffn_up": (L.n_ff, n),
        "ffn_down": (n, L.n_ff), "attn_q_norm": (L.head_dim,),
        "attn_k_norm": (L.head_dim,), "post_attention_norm": (n,),
        "post_ffw_norm": (n,), "layer_output_scale": (1,),
    }
    if L.n_expert:
        E, f = L.n_expert, L.n_ff_exp
        shapes.update({"ffn_gate_inp": (E, n), "ffn_gate_exps": (E, f, n), "ffn_up_exps": (E, f, n),
                       "ffn_gate_up_exps": (E, 2 * f, n), "ffn_down_exps": (E, n, f),
                       "pre_ffw_norm_2": (n,), "post_ffw_norm_1": (n,), "post_ffw_norm_2": (n,)})
    if cfg.n_embd_per_layer:
        pl = cfg.n_embd_per_layer
        shapes.update({"inp_gate": (pl, n), "proj": (n, pl), "post_norm": (n,)})
    return shapes


# --- the model --------------------------------------------------------------------------------

class KVCache:
    """Post-rope K and V of each layer that keeps its own, preallocated for `max_ctx` positions
    (Gemma 4's KV-shared layers read another layer's)."""

    def __init__(self, cfg: ModelConfig, max_ctx: int, device, dtype=torch.float32):
        self.k: dict[int, Tensor] = {}
        self.v: dict[int, Tensor] = {}
        for i, layer in enumerate(cfg.layers):
            if layer.kv_layer == i:
                shape = (max_ctx, layer.n_head_kv, layer.head_dim)
                self.k[i] = torch.zeros(shape, device=device, dtype=dtype)
                self.v[i] = torch.zeros(shape, device=device, dtype=dtype)
        self.max_ctx = max_ctx

    def store(self, layer: int, start: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        end = start + k.shape[0]
        self.k[layer][start:end] = k
        self.v[layer][start:end] = v
        return self.read(layer, end)

    def read(self, layer: int, end: int) -> tuple[Tensor, Tensor]:
        return self.k[layer][:end], self.v[layer][:end]


class Transformer:
    def __init__(self, cfg: ModelConfig, weights: dict[str, Tensor], faults: FaultSet = FaultSet(),
                 source: str = "model"):
        self.cfg = cfg
        self.faults = faults
        self.source = source
        weights = fold_weight_scales(weights)
        self.tok_embd = weights["token_embd.weight"]
        self.output = weights.get("output.weight", self.tok_embd)
        self.output_norm = weights["output_norm.weight"]
        self.rope_freqs = self._rope_freqs(weights)
        self.ple = self._per_layer_embedding_weights(weights)
        self.layers = [self._layer_weights(weights, i, source) for i in range(cfg.n_layer)]
        self.device = self.tok_embd.device
        # the rope dims of sliding layers (for the rope-dims-global fault)
        self.n_rot_swa = next((layer.n_rot for layer in cfg.layers if layer.swa), cfg.n_rot)

    # -- loading ------------------------------------------------------------------------------

    def _missing(self, name: str, why: str = "") -> ModelLoadError:
        return ModelLoadError(f"{self.source}: tensor '{name}' is missing (required by "
                              f"architecture '{self.cfg.arch}'{why})")

    def _presence(self, when: str, i: int, weights: dict[str, Tensor]) -> bool | None:
        """True: layer i must have the tensor; None: it may (used if present); False: unused."""
        L, spec = self.cfg.layers[i], self.cfg.spec
        own_kv = L.kv_layer == i  # KV-shared layers may still carry attn_k/attn_v: unused
        moe = L.n_expert > 0
        fused = f"blk.{i}.ffn_gate_up_exps.weight" in weights
        return {
            "always": True,
            "own_kv": True if own_kv else None,
            "own_v": (None if spec.v_optional else True) if own_kv else None,
            "qk_norm": spec.qk_norm,
            "k_norm": (True if own_kv else None) if spec.qk_norm else False,
            "post_norms": spec.post_norms,
            "dense_mlp": not moe or spec.moe == "beside_mlp",
            "moe": moe,
            "moe_optional": None if moe else False,
            "beside": moe and spec.moe == "beside_mlp",
            "fused_gate_up": None if moe else False,
            "split_gate_up": moe and not fused,
            "ple": self.cfg.n_embd_per_layer > 0,
            "out_scale": None if spec.out_scale else False,
        }[when]

    def _layer_weights(self, weights: dict[str, Tensor], i: int, source: str) -> LayerWeights:
        fields = {}
        for field_name, (gguf_name, when) in LAYER_TENSORS.items():
            need = self._presence(when, i, weights)
            name = f"blk.{i}.{gguf_name}"
            if need is False:
                continue
            if name in weights:
                fields[field_name] = weights[name]
            elif need:
                raise self._missing(name)
        gate_up = fields.pop("exp_gate_up", None)
        if gate_up is not None:  # fused experts: each expert's first half of rows is the gate
            n = gate_up.shape[1] // 2
            fields["exp_gate"], fields["exp_up"] = gate_up[:, :n], gate_up[:, n:]
        L = self.cfg.layers[i]
        for field_name, want in (("router_scale", (self.cfg.n_embd,)),
                                 ("exp_down_scale", (L.n_expert,))):
            got = fields.get(field_name)
            if got is not None and tuple(got.shape) != want:
                raise ModelLoadError(f"{source}: tensor 'blk.{i}.{LAYER_TENSORS[field_name][0]}' "
                                     f"has shape {list(got.shape)}, expected {list(want)}")
        return LayerWeights(**fields)

    def _rope_freqs(self, weights: dict[str, Tensor]) -> Tensor | None:
        """Per-pair frequency divisors (llama3 scaling; Gemma 4's proportional rope, where a
        factor of 1e30 leaves a pair unrotated). Gemma 4 requires them for its global layers."""
        freqs = weights.get("rope_freqs.weight")
        users = [layer for layer in self.cfg.layers if layer.rope_freqs]
        if freqs is None:
            if self.cfg.spec.rope_freqs_global_only and users:
                raise self._missing("rope_freqs.weight", ", for the global layers' rope")
            return None
        for layer in users:
            if tuple(freqs.shape) != (layer.n_rot // 2,):
                raise ModelLoadError(f"{self.source}: tensor 'rope_freqs.weight' has shape "
                                     f"{list(freqs.shape)}, expected [{layer.n_rot // 2}] (half "
                                     f"the rope dims {layer.n_rot})")
        return freqs

    def _per_layer_embedding_weights(self, weights: dict[str, Tensor]) -> dict[str, Tensor] | None:
        cfg, n = self.cfg, self.cfg.n_embd_per_layer
        if not n:
            return None
        want = {"per_layer_token_embd.weight": (cfg.n_vocab, cfg.n_layer * n),
                "per_layer_model_proj.weight": (cfg.n_layer * n, cfg.n_embd),
                "per_layer_proj_norm.weight": (n,)}
        for name, shape in want.items():
            if name not in weights:
                raise self._missing(name, f", with embedding_length_per_layer_input={n}")
            if tuple(weights[name].shape) != shape:
                raise ModelLoadError(f"{self.source}: tensor '{name}' has shape "
                                     f"{list(weights[name].shape)}, expected {list(shape)}")
        return {name.split(".")[0]: weights[name] for name in want}

    # -- forward ------------------------------------------------------------------------------

    def forward(self, tokens: Tensor, start: int, cache: KVCache,
                tap: TapFn | None = None, all_logits: bool = True) -> Tensor:
        """Run `tokens` (ids at positions start..start+T-1) and return logits [T, n_vocab].

        With all_logits=False only the last position's logits are computed: the lm head of a
        262k vocabulary over a whole prompt would cost more than the rest of the prefill.
        """
        cfg, spec = self.cfg, self.cfg.spec
        positions = torch.arange(start, start + tokens.shape[0], device=self.device)

        x = emit(tap, "inp_embd", GLOBAL, self.tok_embd[tokens])
        if spec.embed_scale or self.faults.active("embed-scale"):
            scale = math.sqrt(cfg.n_embd)
            if self.faults.active("embed-scale"):
                scale = float(cfg.n_embd) if spec.embed_scale else math.sqrt(cfg.n_embd)
            x = emit(tap, "inp_scaled", GLOBAL, x * scale)
        per_layer = self.per_layer_inputs(tokens, x, tap) if self.ple is not None else None

        for i in range(cfg.n_layer):
            x = self.block(i, x, positions, cache, tap, per_layer)
        if not all_logits:
            x = x[-1:]

        x = emit(tap, "result_norm", GLOBAL, rms_norm(x, self.output_norm, cfg.rms_eps))
        logits = x @ self.output.T
        if cfg.final_logit_softcap:
            logits = softcap(logits, cfg.final_logit_softcap)
        return emit(tap, "result_output", GLOBAL, logits)

    def per_layer_inputs(self, tokens: Tensor, x: Tensor, tap: TapFn | None) -> Tensor:
        """Gemma 4's per-layer inputs [T, n_layer, n_pl] (llama.cpp's project_per_layer_inputs):
        the token's own row of per_layer_token_embd times sqrt(n_pl), plus the scaled embedding
        projected (over sqrt(n_embd)) and RMS-normed, the sum over sqrt(2)."""
        cfg, n, T = self.cfg, self.cfg.n_embd_per_layer, tokens.shape[0]
        own = self.ple["per_layer_token_embd"][tokens].view(T, cfg.n_layer, n) * math.sqrt(n)
        proj = (x @ self.ple["per_layer_model_proj"].T / math.sqrt(cfg.n_embd))
        proj = rms_norm(proj.view(T, cfg.n_layer, n), self.ple["per_layer_proj_norm"], cfg.rms_eps)
        out = emit(tap, "inp_per_layer", GLOBAL, ((proj + own) / math.sqrt(2.0)).reshape(T, -1))
        return out.view(T, cfg.n_layer, n)

    def block(self, i: int, x: Tensor, positions: Tensor, cache: KVCache,
              tap: TapFn | None, per_layer: Tensor | None = None) -> Tensor:
        cfg, spec, w = self.cfg, self.cfg.spec, self.layers[i]
        h = emit(tap, "attn_norm", i, rms_norm(x, w.attn_norm, cfg.rms_eps))
        h = emit(tap, "attn_out", i, self.attention(i, h, positions, cache, tap) @ w.wo.T)
        if spec.post_norms:
            h = emit(tap, "attn_post_norm", i, rms_norm(h, w.attn_post_norm, cfg.rms_eps))
        x = emit(tap, "ffn_inp", i, x + h)

        h = self.ffn(i, x, tap)
        if spec.post_norms:
            h = emit(tap, "ffn_post_norm", i, rms_norm(h, w.ffn_post_norm, cfg.rms_eps))
        x = x + h
        if per_layer is not None or w.out_scale is not None:
            x = emit(tap, "pe_in", i, x)  # Gemma 4: the residual before the per-layer extras
        if per_layer is not None:
            x = x + self.per_layer_embedding(i, x, per_layer[:, i], tap)
        if w.out_scale is not None:
            x = x * w.out_scale
        return emit(tap, "l_out", i, x)

    def per_layer_embedding(self, i: int, x: Tensor, inp: Tensor, tap: TapFn | None) -> Tensor:
        """Gemma 4: gelu(inp_gate x) times this layer's per-layer input, projected, RMS-normed."""
        w = self.layers[i]
        h = F.gelu(x @ w.ple_gate.T, approximate="tanh") * inp
        return emit(tap, "per_layer_embd_out", i,
                    rms_norm(h @ w.ple_proj.T, w.ple_post_norm, self.cfg.rms_eps))

    def ffn(self, i: int, x: Tensor, tap: TapFn | None) -> Tensor:
        """Layer i's FFN on the residual x: a dense MLP, routed experts (qwen3moe), or Gemma 4's
        dense MLP beside routed experts, each branch with its own norms."""
        cfg, spec, w, L = self.cfg, self.cfg.spec, self.layers[i], self.cfg.layers[i]
        h = emit(tap, "ffn_norm", i, rms_norm(x, w.ffn_norm, cfg.rms_eps))
        if not L.n_expert:
            return self.mlp(i, h, tap)
        if spec.moe == "routed":
            return self.experts(i, h, emit(tap, "ffn_moe_logits", i, h @ w.router.T), tap)
        mlp = emit(tap, "ffn_mlp", i, rms_norm(self.mlp(i, h, tap), w.mlp_post_norm, cfg.rms_eps))
        h2 = emit(tap, "ffn_norm_2", i, rms_norm(x, w.ffn_norm_2, cfg.rms_eps))
        # the router reads the residual: RMS-normed, over sqrt(n_embd), times its learned scale
        r = rms_norm(x, None, cfg.rms_eps) / math.sqrt(cfg.n_embd)
        if not self.faults.active("router-no-scale", i):
            r = r * w.router_scale
        logits = emit(tap, "ffn_moe_logits", i, r @ w.router.T)
        moe = emit(tap, "ffn_moe", i,
                   rms_norm(self.experts(i, h2, logits, tap), w.moe_post_norm, cfg.rms_eps))
        return emit(tap, "ffn_moe_combined", i, mlp + moe)

    def mlp(self, i: int, h: Tensor, tap: TapFn | None) -> Tensor:
        w, act = self.layers[i], self.cfg.spec.ffn_act
        gate = emit(tap, "ffn_gate", i, h @ w.w_gate.T)
        up = emit(tap, "ffn_up", i, h @ w.w_up.T)
        h = emit(tap, "ffn_act", i, ffn_activation(act, gate) * up)
        return emit(tap, "ffn_out", i, h @ w.w_down.T)

    def experts(self, i: int, h: Tensor, logits: Tensor, tap: TapFn | None) -> Tensor:
        w, L = self.layers[i], self.cfg.layers[i]
        probs, ids = route(logits, L.n_expert_used)
        probs = emit(tap, "ffn_moe_probs", i, probs)
        # the router's choice (compared as sets); a debugger may impose the reference's choice
        # here so that a near-tie decided the other way does not cascade (impdiff.diff)
        ids = emit(tap, "ffn_moe_topk", i, ids.to(h.dtype)).round().long()
        weights = emit(tap, "ffn_moe_weights", i, expert_weights(probs, ids))
        out = experts_ffn(h, ids, weights, w.exp_gate, w.exp_up, w.exp_down, w.exp_down_scale,
                          self.cfg.spec.ffn_act)
        return emit(tap, "ffn_moe_out", i, out)

    def attention(self, i: int, h: Tensor, positions: Tensor, cache: KVCache,
                  tap: TapFn | None) -> Tensor:
        cfg, spec, w, faults, L = self.cfg, self.cfg.spec, self.layers[i], self.faults, \
            self.cfg.layers[i]
        T, d = h.shape[0], L.head_dim
        qk_norm = spec.qk_norm and not faults.active("no-qk-norm", i)
        q = emit(tap, "Qcur", i, (h @ w.wq.T).view(T, L.n_head, d))
        if qk_norm:
            q = emit(tap, "Qcur_normed", i, rms_norm(q, w.q_norm, cfg.rms_eps))
        cos, sin, n_rot = self.rope(i, positions)
        q = emit(tap, "Qcur_pos", i, apply_rope(q, cos, sin, n_rot, spec.rope_neox))

        if L.kv_layer == i:  # this layer computes and caches its own K and V
            k = emit(tap, "Kcur", i, (h @ w.wk.T).view(T, L.n_head_kv, d))
            # Gemma 4 layers without attn_v use K's projection as V (before K's norm)
            v = emit(tap, "Vcur", i, k if w.wv is None else (h @ w.wv.T).view(T, L.n_head_kv, d))
            if qk_norm:
                k = emit(tap, "Kcur_normed", i, rms_norm(k, w.k_norm, cfg.rms_eps))
            if spec.v_norm:
                v = emit(tap, "Vcur_normed", i, rms_norm(v, None, cfg.rms_eps))
            k = emit(tap, "Kcur_pos", i, apply_rope(k, cos, sin, n_rot, spec.rope_neox))
            cache.store(i, int(positions[0]), k, v)
        k_all, v_all = cache.read(self.kv_source(i), int(positions[-1]) + 1)

        window = cfg.sliding_window if (L.swa or faults.active("swa-on-global", i)) else 0
        k_pos = torch.arange(k_all.shape[0], device=h.device)
        mask = attention_mask(positions, k_pos, window, faults.active("swa-off-by-one", i))
        out = emit(tap, "kqv", i, attend(q, k_all, v_all, mask, cfg.attn_scale))
        return emit(tap, "kqv_out", i, out.reshape(T, L.n_head * d))

    def kv_source(self, i: int) -> int:
        """The layer whose KV cache layer i attends to: itself, or for Gemma 4's KV-shared
        layers an earlier one of the same kind (kv-share-wrong-layer: the one before that)."""
        layers, src = self.cfg.layers, self.cfg.layers[i].kv_layer
        if src != i and self.faults.active("kv-share-wrong-layer", i):
            same = [j for j in range(src) if layers[j].swa == layers[i].swa]
            src = same[-1] if same else src
        return src

    def rope(self, i: int, positions: Tensor) -> tuple[Tensor, Tensor, int]:
        """cos and sin [T, n_rot/2] of layer i, and the dims they rotate.

        Sliding layers rotate `rope.dimension_count_swa` dims with `rope.freq_base_swa`; global
        layers the full head with `rope.freq_base`, the `rope_freqs` divisors making Gemma 4's
        rope proportional (pairs i < rotated/2 turn at base^(-2i/head_dim), the rest stay put).
        The rope faults (the seeds' hypotheses) bend it here, on global layers only.
        """
        cfg, L, faults = self.cfg, self.cfg.layers[i], self.faults
        n_rot, base, scale = L.n_rot, L.rope_base, L.rope_freq_scale
        factors = self.rope_freqs if L.rope_freqs else None
        if L.swa or not cfg.is_swa:
            return (*rope_angles(positions, n_rot, base, scale, factors), n_rot)
        if faults.active("rope-base-global", i):
            base, scale = cfg.rope_base_swa, 1.0
        if faults.active("rope-dims-global", i):  # the sliding layers' rope dims
            n_rot = self.n_rot_swa
            factors = None if factors is None else factors[:n_rot // 2]
        rotated = n_rot if factors is None else 2 * int((factors < 1e20).sum())
        if rotated < n_rot and faults.active("rope-prop-rotated-dims", i):
            # frequencies relative to the rotated dims: base^(-2j/rotated), not base^(-2j/n_rot)
            j = torch.arange(n_rot // 2, dtype=torch.float64, device=positions.device)
            factors = torch.where(j < rotated // 2, base ** (2 * j / rotated - 2 * j / n_rot),
                                  torch.full_like(j, 1e30))
        cos, sin = rope_angles(positions, n_rot, base, scale, factors)
        if rotated < n_rot and faults.active("rope-prop-pairs", i):
            # a partial rotation of the first `rotated` dims: pairs (j, j + rotated/2)
            return cos[:, :rotated // 2], sin[:, :rotated // 2], rotated
        return cos, sin, n_rot
