"""The router's choice compared as sets: did both runtimes pick the same experts for a token?

A MoE router's top-k is a discrete decision. Two runtimes whose router logits differ by a tiny
amount pick different experts wherever two experts' logits are that close, and nothing is wrong.
So each position's choice is compared as a set (the order within the top k does not matter)
and every expert picked by one runtime only is checked against the reference's router logits:
if its logit lies within the logit error of the reference's k-th pick, the swap is explained by
router-logit noise; if not, a different expert was picked for a reason of its own (the verdict
"a different expert was picked"). A router whose logits themselves are wrong diverges earlier,
at `ffn_moe_logits`, and its swaps are then all explained.

The per-position metrics reuse the columns of `tensor_metrics` so that the tap table keeps one
schema: `cos` is the agreement |A ∩ B| / k, `rel_l2` the fraction of the k picks that differ
and are not explained by noise (what localisation reads), `nmse` the raw fraction that differs
(1 - agreement), `max_abs` the number of differing experts, `sqnr_db` 0.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

SCORE_TAP = "ffn_moe_logits"  # the logits the top-k of a set tap was taken from
NOISE_MARGIN = 2.0  # a swap is noise if within this many times the largest logit error


def set_metrics(a: np.ndarray, b: np.ndarray, a_scores: np.ndarray | None = None,
                b_scores: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per position: agreement of the id sets a[t] (tested) and b[t] (reference), [T, k], and
    the part of the disagreement the router logits [T, n_expert] do not explain."""
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {a.shape} vs {b.shape}")
    ia, ib = np.rint(a).astype(np.int64), np.rint(b).astype(np.int64)
    T, k = ia.shape
    n_expert = int(max(ia.max(initial=0), ib.max(initial=0))) + 1
    if a_scores is not None and b_scores is not None:
        n_expert = max(n_expert, b_scores.shape[1])
    in_a = np.zeros((T, n_expert), bool)
    in_b = np.zeros((T, n_expert), bool)
    rows = np.arange(T)[:, None]
    in_a[rows, ia] = True
    in_b[rows, ib] = True
    only_a = in_a & ~in_b  # picked by the tested runtime only
    differ = only_a.sum(1)
    unexplained = differ.astype(np.float64)
    if a_scores is not None and b_scores is not None and a_scores.shape == b_scores.shape:
        err = np.abs(np.asarray(a_scores, np.float64) - np.asarray(b_scores, np.float64)).max(1)
        ref = np.asarray(b_scores, np.float64)
        kth = np.take_along_axis(ref, ib, 1).min(1)  # the reference's weakest pick
        near = ref >= (kth - NOISE_MARGIN * err - 1e-6 * np.abs(kth))[:, None]
        unexplained = (only_a & ~near).sum(1).astype(np.float64)
    return {"cos": 1.0 - differ / k, "rel_l2": unexplained / k, "nmse": differ / k,
            "max_abs": differ.astype(np.float64), "sqnr_db": np.zeros(T)}


def expert_choice(taps: pd.DataFrame, tap: str = "ffn_moe_topk") -> pd.DataFrame:
    """Per MoE layer: mean agreement of the picked sets, the share of positions where both
    runtimes picked exactly the same experts, and the positions with an unexplained swap."""
    rows = taps[taps.tap == tap]
    if rows.empty:
        return pd.DataFrame(columns=["layer", "agreement", "same_set", "unexplained", "n"])
    g = rows.groupby("layer")
    return pd.DataFrame({
        "agreement": g["cos"].mean(),
        "same_set": g["cos"].apply(lambda s: float((s >= 1.0 - 1e-9).mean())),
        "unexplained": g["rel_l2"].apply(lambda s: int((s > 0).sum())),
        "n": g.size(),
    }).reset_index()



ROUTER_TAP = "ffn_moe_topk"


def follow_router(reference_taps: dict) -> dict:
    """Patches that make the runtime under test route every token to the experts the reference
    picked (its own pick is still captured and compared). Without this, one near-tie decided
    the other way by rounding noise sends a token through other experts, and the difference
    cascades through every later layer and, through attention, to later positions."""
    return {k: v for k, v in reference_taps.items() if k[0] == ROUTER_TAP}


def with_router(selection):
    """The selection plus the router's top-k (which following needs from the reference)."""
    from ..taps import TapSelection

    if selection.names is None:
        return selection
    return TapSelection(selection.names | {ROUTER_TAP}, selection.layers)
