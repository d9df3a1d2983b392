"""The transformer, top to bottom, as llama.cpp computes it for llama, qwen3 and gemma3.

This is the reference: plain torch in float32, one function per op, nothing fused. Every
intermediate passes through `emit(name, layer, x)`, the tap point: with no tap function it is a
single `is None` test; a tap function may record the tensor, or return a replacement to patch
the activation (used by the debugger's substitution check).

Tap names and layouts are those of `impdiff.taps` (`[position, hidden]`,
`[position, head, head_dim]`, `[position, features]`).
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


# --- weights ----------------------------------------------------------------------------------

@dataclass
class LayerWeights:
    attn_norm: Tensor
    wq: Tensor
    wk: Tensor
    wv: Tensor
    wo: Tensor
    ffn_norm: Tensor
    w_gate: Tensor
    w_up: Tensor
    w_down: Tensor
    q_norm: Tensor | None = None
    k_norm: Tensor | None = None
    attn_post_norm: Tensor | None = None
    ffn_post_norm: Tensor | None = None


LAYER_TENSORS = {
    # field: (GGUF name, needed only when the arch spec says so)
    "attn_norm": ("attn_norm", None), "wq": ("attn_q", None), "wk": ("attn_k", None),
    "wv": ("attn_v", None), "wo": ("attn_output", None), "ffn_norm": ("ffn_norm", None),
    "w_gate": ("ffn_gate", None), "w_up": ("ffn_up", None), "w_down": ("ffn_down", None),
    "q_norm": ("attn_q_norm", "qk_norm"), "k_norm": ("attn_k_norm", "qk_norm"),
    "attn_post_norm": ("post_attention_norm", "post_norms"),
    "ffn_post_norm": ("post_ffw_norm", "post_norms"),
}


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    q, kv = cfg.n_head * cfg.head_dim, cfg.n_head_kv * cfg.head_dim
    return {
        "attn_norm": (cfg.n_embd,), "attn_q": (q, cfg.n_embd), "attn_k": (kv, cfg.n_embd),
        "attn_v": (kv, cfg.n_embd), "attn_output": (cfg.n_embd, q), "ffn_norm": (cfg.n_embd,),
        "ffn_gate": (cfg.n_ff, cfg.n_embd), "ffn_up": (cfg.n_ff, cfg.n_embd),
        "ffn_down": (cfg.n_embd, cfg.n_ff), "attn_q_norm": (cfg.head_dim,),
        "attn_k_norm": (cfg.head_dim,), "post_attention_norm": (cfg.n_embd,),
        "post_ffw_norm": (cfg.n_embd,),
    }


# --- the model --------------------------------------------------------------------------------

class KVCache:
    """Post-rope K and V for every layer, preallocated for `max_ctx` positions."""

    def __init__(self, cfg: ModelConfig, max_ctx: int, device, dtype=torch.float32):
        shape = (cfg.n_layer, max_ctx, cfg.n_head_kv, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_ctx = max_ctx

    def store(self, layer: int, start: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        end = start + k.shape[0]
        self.k[layer, start:end] = k
        self.v[layer, start:end] = v
        return self.k[layer, :end], self.v[layer, :end]


class Transformer:
    def __init__(self, cfg: ModelConfig, weights: dict[str, Tensor], faults: FaultSet = FaultSet(),
                 source: str = "model"):
        self.cfg = cfg
        self.faults = faults
        self.tok_embd = weights["token_embd.weight"]
        self.output = weights.get("output.weight", self.tok_embd)
        self.output_norm = weights["output_norm.weight"]
        self.rope_freqs = weights.get("rope_freqs.weight")
        self.layers = [self._layer_weights(weights, i, source) for i in range(cfg.n_layer)]
        self.device = self.tok_embd.device

    def _layer_weights(self, weights: dict[str, Tensor], i: int, source: str) -> LayerWeights:
        spec, fields = self.cfg.spec, {}
        for field_name, (gguf_name, needed_if) in LAYER_TENSORS.items():
            if needed_if is not None and not getattr(spec, needed_if):
                continue
            name = f"blk.{i}.{gguf_name}.weight"
            if name not in weights:
                raise ModelLoadError(f"{source}: tensor '{name}' is missing "
                                     f"(required by architecture '{self.cfg.arch}')")
            fields[field_name] = weights[name]
        return LayerWeights(**fields)

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

        for i in range(cfg.n_layer):
            x = self.block(i, x, positions, cache, tap)
        if not all_logits:
            x = x[-1:]

        x = emit(tap, "result_norm", GLOBAL, rms_norm(x, self.output_norm, cfg.rms_eps))
        logits = x @ self.output.T
        if cfg.final_logit_softcap:
            c = cfg.final_logit_softcap
            logits = torch.tanh(logits / c) * c
        return emit(tap, "result_output", GLOBAL, logits)

    def block(self, i: int, x: Tensor, positions: Tensor, cache: KVCache,
              tap: TapFn | None) -> Tensor:
        cfg, spec, w = self.cfg, self.cfg.spec, self.layers[i]
        h = emit(tap, "attn_norm", i, rms_norm(x, w.attn_norm, cfg.rms_eps))
        h = emit(tap, "attn_out", i, self.attention(i, h, positions, cache, tap) @ w.wo.T)
        if spec.post_norms:
            h = emit(tap, "attn_post_norm", i, rms_norm(h, w.attn_post_norm, cfg.rms_eps))
        x = emit(tap, "ffn_inp", i, x + h)

        h = emit(tap, "ffn_norm", i, rms_norm(x, w.ffn_norm, cfg.rms_eps))
        gate = emit(tap, "ffn_gate", i, h @ w.w_gate.T)
        up = emit(tap, "ffn_up", i, h @ w.w_up.T)
        act = emit(tap, "ffn_act", i, ffn_activation(spec.ffn_act, gate) * up)
        h = emit(tap, "ffn_out", i, act @ w.w_down.T)
        if spec.post_norms:
            h = emit(tap, "ffn_post_norm", i, rms_norm(h, w.ffn_post_norm, cfg.rms_eps))
        return emit(tap, "l_out", i, x + h)

    def attention(self, i: int, h: Tensor, positions: Tensor, cache: KVCache,
                  tap: TapFn | None) -> Tensor:
        cfg, spec, w, faults = self.cfg, self.cfg.spec, self.layers[i], self.faults
        T, d = h.shape[0], cfg.head_dim
        q = emit(tap, "Qcur", i, (h @ w.wq.T).view(T, cfg.n_head, d))
        k = emit(tap, "Kcur", i, (h @ w.wk.T).view(T, cfg.n_head_kv, d))
        v = emit(tap, "Vcur", i, (h @ w.wv.T).view(T, cfg.n_head_kv, d))
        if spec.qk_norm and not faults.active("no-qk-norm", i):
            q = emit(tap, "Qcur_normed", i, rms_norm(q, w.q_norm, cfg.rms_eps))
            k = emit(tap, "Kcur_normed", i, rms_norm(k, w.k_norm, cfg.rms_eps))

        swa = cfg.layer_is_swa(i)
        if swa or (faults.active("rope-base-global", i) and cfg.is_swa):
            base, freq_scale = cfg.rope_base_swa, 1.0
        else:
            base, freq_scale = cfg.rope_base, cfg.rope_freq_scale
        cos, sin = rope_angles(positions, cfg.n_rot, base, freq_scale, self.rope_freqs)
        q = emit(tap, "Qcur_pos", i, apply_rope(q, cos, sin, cfg.n_rot, spec.rope_neox))
        k = emit(tap, "Kcur_pos", i, apply_rope(k, cos, sin, cfg.n_rot, spec.rope_neox))

        start = int(positions[0])
        k_all, v_all = cache.store(i, start, k, v)
        window = cfg.sliding_window if (swa or faults.active("swa-on-global", i)) else 0
        k_pos = torch.arange(k_all.shape[0], device=h.device)
        mask = attention_mask(positions, k_pos, window, faults.active("swa-off-by-one", i))
        out = emit(tap, "kqv", i, attend(q, k_all, v_all, mask, cfg.attn_scale))
        return emit(tap, "kqv_out", i, out.reshape(T, cfg.n_head * d))
