"""Canonical activation taps: the stable names every runtime's activations are mapped to.

A tap is identified by `(name, layer)`; `layer` is -1 for taps outside the layer stack. Names
follow llama.cpp's graph names where llama.cpp names the tensor, so a user who has read a
llama.cpp log recognises them. Every tap has one canonical layout:

- `hidden`: `[position, n_embd]`
- `heads`:  `[position, head, head_dim]`
- `flat`:   `[position, features]` (merged heads, FFN width, vocabulary)

The order below is the order of computation inside a layer; localisation walks it to find the
first tap that diverges.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

GLOBAL_LAYER = -1


@dataclass(frozen=True)
class TapSpec:
    name: str
    layout: str  # "hidden" | "heads" | "flat"
    per_layer: bool
    doc: str
    # the taps this one is computed from, in the same layer; the first present one is used for
    # "parents_first" taps (a residual's inputs are alternatives), the worst of all otherwise
    parents: tuple[str, ...] = ()
    parents_first: bool = False
    # "values": compared element-wise (metrics of impdiff.compare.metrics); "set": each row is
    # a set of ids (the router's top-k experts), compared as sets (impdiff.compare.experts)
    compare: str = "values"
    # False for taps that round nothing of their own (the router's F32 softmax and weights):
    # their error is their inputs' error, which grows with depth, so they are judged against
    # their inputs (the jump test) and not against a floor shared by all layers
    local_noise: bool = True


TAP_SPECS: tuple[TapSpec, ...] = (
    TapSpec("inp_embd", "hidden", False, "token embedding rows"),
    TapSpec("inp_scaled", "hidden", False, "embedding times sqrt(n_embd) (Gemma)"),
    TapSpec("inp_per_layer", "flat", False, "per-layer inputs of every layer, layer-major (gemma4 E2B/E4B)"),
    TapSpec("attn_norm", "hidden", True, "RMS norm before attention"),
    TapSpec("Qcur", "heads", True, "Q projection, before q-norm and rope", ("attn_norm",)),
    TapSpec("Kcur", "heads", True, "K projection, before k-norm and rope", ("attn_norm",)),
    TapSpec("Vcur", "heads", True, "V projection", ("attn_norm",)),
    TapSpec("Qcur_normed", "heads", True, "Q after per-head RMS norm (qwen3, gemma)", ("Qcur",)),
    TapSpec("Kcur_normed", "heads", True, "K after per-head RMS norm (qwen3, gemma)", ("Kcur",)),
    TapSpec("Vcur_normed", "heads", True, "V after RMS norm without weight (gemma4)", ("Vcur",)),
    TapSpec("Qcur_pos", "heads", True, "Q after rope", ("Qcur_normed", "Qcur"), True),
    TapSpec("Kcur_pos", "heads", True, "K after rope", ("Kcur_normed", "Kcur"), True),
    TapSpec("kqv", "heads", True, "attention result per head (softmax(QK^T)V)", ("Qcur_pos", "Kcur_pos", "Vcur_normed", "Vcur")),
    TapSpec("kqv_out", "flat", True, "attention result with heads merged", ("kqv",)),
    TapSpec("attn_out", "hidden", True, "attention output projection", ("kqv_out",)),
    TapSpec("attn_post_norm", "hidden", True, "RMS norm after attention (gemma)", ("attn_out",)),
    TapSpec("ffn_inp", "hidden", True, "residual stream after attention (llama.cpp: sa_out/ffn_inp)", ("attn_post_norm", "attn_out"), True),
    TapSpec("ffn_norm", "hidden", True, "RMS norm before the FFN", ("ffn_inp",)),
    TapSpec("ffn_gate", "flat", True, "FFN gate projection", ("ffn_norm",)),
    TapSpec("ffn_up", "flat", True, "FFN up projection", ("ffn_norm",)),
    TapSpec("ffn_act", "flat", True, "activation(gate) * up (llama.cpp: ffn_swiglu/ffn_geglu)", ("ffn_gate", "ffn_up")),
    TapSpec("ffn_out", "hidden", True, "FFN down projection", ("ffn_act",)),
    TapSpec("ffn_mlp", "hidden", True, "dense MLP beside the experts, post-normed (gemma4 MoE layers)", ("ffn_out",)),
    TapSpec("ffn_norm_2", "hidden", True, "RMS norm before the experts (gemma4 MoE layers)", ("ffn_inp",)),
    TapSpec("ffn_moe_logits", "flat", True, "router logits, one per expert", ("ffn_inp",)),
    TapSpec("ffn_moe_probs", "flat", True, "router probabilities (softmax over all experts)", ("ffn_moe_logits",), local_noise=False),
    TapSpec("ffn_moe_topk", "flat", True, "the experts the router picked (ids, most probable first)", ("ffn_moe_probs",), compare="set"),
    TapSpec("ffn_moe_weights", "flat", True, "the picked experts' weights, renormalised to sum 1", ("ffn_moe_probs",), local_noise=False),
    TapSpec("ffn_moe_out", "hidden", True, "weighted sum of the picked experts' outputs", ("ffn_moe_weights", "ffn_norm_2", "ffn_norm")),
    TapSpec("ffn_moe", "hidden", True, "experts' sum, post-normed (gemma4 MoE layers)", ("ffn_moe_out",)),
    TapSpec("ffn_moe_combined", "hidden", True, "dense MLP + experts (gemma4 MoE layers)", ("ffn_mlp", "ffn_moe")),
    TapSpec("ffn_post_norm", "hidden", True, "RMS norm after the FFN (gemma)", ("ffn_moe_combined", "ffn_out"), True),
    TapSpec("pe_in", "hidden", True, "residual stream after the FFN, before gemma4's per-layer embedding and output scale", ("ffn_post_norm", "ffn_out", "ffn_moe_out"), True),
    TapSpec("per_layer_embd_out", "hidden", True, "per-layer embedding branch, post-normed (gemma4 E2B/E4B)", ("pe_in",)),
    TapSpec("l_out", "hidden", True, "layer output (residual stream; gemma4: times the layer's output scale)", ("pe_in", "ffn_post_norm", "ffn_out", "ffn_moe_out"), True),
    TapSpec("result_norm", "hidden", False, "final RMS norm"),
    TapSpec("result_output", "flat", False, "logits", ("result_norm",)),
)

TAPS: dict[str, TapSpec] = {t.name: t for t in TAP_SPECS}
TAP_ORDER: dict[str, int] = {t.name: i for i, t in enumerate(TAP_SPECS)}


@dataclass(frozen=True)
class TapSelection:
    """Which taps to capture. `None` means all names / all layers."""

    names: frozenset[str] | None = None
    layers: frozenset[int] | None = None

    def wants(self, name: str, layer: int) -> bool:
        if self.names is not None and name not in self.names:
            return False
        if layer == GLOBAL_LAYER or self.layers is None:
            return True
        return layer in self.layers

    @classmethod
    def parse(cls, names: str | None = None, layers: str | None = None) -> "TapSelection":
        """Parse CLI forms: names 'l_out,kqv_out'; layers '4-8', '0,5,11', '3-'."""
        name_set = None
        if names:
            name_set = frozenset(n.strip() for n in names.split(",") if n.strip())
            unknown = sorted(name_set - TAPS.keys())
            if unknown:
                raise ValueError(
                    f"--taps: unknown tap(s) {', '.join(unknown)}; known: {', '.join(TAPS)}"
                )
        layer_set = frozenset(parse_layer_ranges(layers)) if layers else None
        return cls(name_set, layer_set)


def parse_layer_ranges(text: str, n_layers: int = 10_000) -> Iterable[int]:
    """'4-8' -> 4..8, '0,5,11' -> those, '3-' -> 3..n_layers-1."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                lo, hi = part.split("-", 1)
                out.extend(range(int(lo), (int(hi) if hi else n_layers - 1) + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise ValueError(f"--layers: '{part}' is not a layer number or range like 4-8") from None
    return out
