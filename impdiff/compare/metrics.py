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


def tensor_metrics(a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    """cosine, relative L2 (||a-b|| / ||b||), NMSE, max |a-b| and SQNR (dB) per position."""
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {a.shape} vs {b.shape}")
    a, b = _flat(a), _flat(b)
    diff = a - b
    err2 = (diff * diff).sum(1)
    ref2 = (b * b).sum(1)
    a2 = (a * a).sum(1)
    cos = (a * b).sum(1) / np.sqrt(np.maximum(a2 * ref2, EPS))
    nmse = err2 / np.maximum(ref2, EPS)
    return {
        "cos": cos,
        "rel_l2": np.sqrt(nmse),
        "nmse": nmse,
        "max_abs": np.abs(diff).max(1) if diff.shape[1] else np.zeros(len(diff)),
        "sqnr_db": 10.0 * np.log10(np.maximum(ref2, EPS) / np.maximum(err2, EPS)),
    }


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def logit_metrics(a: np.ndarray, b: np.ndarray, k: int = 5) -> dict[str, np.ndarray]:
    """KL(ref || tested) per position, top-1 agreement, top-k overlap, and the tested runtime's
    logit gap between its own top-1 and the reference's top-1 (0 where they agree)."""
    la, lb = log_softmax(a), log_softmax(b)
    kl = (np.exp(lb) * (lb - la)).sum(-1)
    top_a, top_b = a.argmax(-1), b.argmax(-1)
    k = min(k, a.shape[-1])
    topk_a = np.argpartition(-a, k - 1, axis=-1)[:, :k]
    topk_b = np.argpartition(-b, k - 1, axis=-1)[:, :k]
    overlap = np.array([len(set(x) & set(y)) / k for x, y in zip(topk_a, topk_b)])
    rows = np.arange(len(a))
    gap = a[rows, top_a] - a[rows, top_b]
    return {"kl": np.maximum(kl, 0.0), "top1": (top_a == top_b).astype(np.float64),
            f"top{k}": overlap, "top1_gap": gap, "top1_a": top_a, "top1_b": top_b}
