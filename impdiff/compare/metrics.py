"""Per-position divergence metrics between a tested tensor `a` and a reference `b`.

Inputs have the position as their first dimension; every metric reduces over the rest, so a
`[T, heads, dim]` tap and a `[T, hidden]` tap both give one row per position. Computed in
float64: the metrics must not add rounding of their own to errors of order 1e-6.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-30


def _flat(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64).reshape(x.shape[0], -1)


def tensor_metrics(a: np.ndarray, b: np.ndarray, rows: int = 64) -> dict[str, np.ndarray]:
    """cosine, relative L2 (||a-b|| / ||b||), NMSE, max |a-b| and SQNR (dB) per position.

    In blocks of `rows` positions, so a logits tap (262k wide) never needs a float64 copy of
    the whole chunk."""
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {a.shape} vs {b.shape}")
    n = a.shape[0]
    err2, ref2, a2, dot, max_abs = (np.zeros(n) for _ in range(5))
    for lo in range(0, n, rows):
        fa, fb = _flat(a[lo:lo + rows]), _flat(b[lo:lo + rows])
        diff = fa - fb
        err2[lo:lo + rows] = (diff * diff).sum(1)
        ref2[lo:lo + rows] = (fb * fb).sum(1)
        a2[lo:lo + rows] = (fa * fa).sum(1)
        dot[lo:lo + rows] = (fa * fb).sum(1)
        if diff.shape[1]:
            max_abs[lo:lo + rows] = np.abs(diff).max(1)
    nmse = err2 / np.maximum(ref2, EPS)
    return {
        "cos": dot / np.sqrt(np.maximum(a2 * ref2, EPS)),
        "rel_l2": np.sqrt(nmse),
        "nmse": nmse,
        "max_abs": max_abs,
        "sqnr_db": 10.0 * np.log10(np.maximum(ref2, EPS) / np.maximum(err2, EPS)),
    }


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def logit_metrics(a: np.ndarray, b: np.ndarray, k: int = 5, rows: int = 32
                  ) -> dict[str, np.ndarray]:
    """KL(ref || tested) per position, top-1 agreement, top-k overlap, and the tested runtime's
    logit gap between its own top-1 and the reference's top-1 (0 where they agree).

    Worked through `rows` positions at a time: a 512-position chunk of a 262k vocabulary is
    1 GB per float64 copy, and the KL needs several."""
    k = min(k, a.shape[-1])
    kl, overlap = np.empty(len(a)), np.empty(len(a))
    for lo in range(0, len(a), rows):
        la, lb = log_softmax(a[lo:lo + rows]), log_softmax(b[lo:lo + rows])
        kl[lo:lo + rows] = (np.exp(lb) * (lb - la)).sum(-1)
        topk_a = np.argpartition(-a[lo:lo + rows], k - 1, axis=-1)[:, :k]
        topk_b = np.argpartition(-b[lo:lo + rows], k - 1, axis=-1)[:, :k]
        overlap[lo:lo + rows] = [len(set(x) & set(y)) / k for x, y in zip(topk_a, topk_b)]
    top_a, top_b = a.argmax(-1), b.argmax(-1)
    idx = np.arange(len(a))
    gap = a[idx, top_a] - a[idx, top_b]
    return {"kl": np.maximum(kl, 0.0), "top1": (top_a == top_b).astype(np.float64),
            f"top{k}": overlap, "top1_gap": gap, "top1_a": top_a, "top1_b": top_b}
