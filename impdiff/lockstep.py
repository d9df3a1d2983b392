"""Run two runtimes in lockstep on the same token ids and reduce their taps to statistics.

Both runtimes get identical chunks; each chunk's taps are aligned, compared and dropped before
the next chunk runs, so memory stays bounded by one chunk of taps (plus whatever `keep` asks for,
e.g. the reference's layer outputs for the substitution check).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from .compare.experts import SCORE_TAP, set_metrics
from .compare.metrics import logit_metrics, tensor_metrics
from .runtimes.base import ChunkOutput, Runtime, TapKey
from .taps import TAPS

TAP_COLUMNS = ["layer", "tap", "position", "cos", "rel_l2", "nmse", "max_abs", "sqnr_db"]


@dataclass
class LockstepResult:
    taps: pd.DataFrame  # one row per (layer, tap, position)
    logits: pd.DataFrame  # one row per position
    only_a: set[TapKey] = field(default_factory=set)
    only_b: set[TapKey] = field(default_factory=set)
    shape_mismatch: dict[TapKey, tuple] = field(default_factory=dict)
    unmapped: dict[str, set[str]] = field(default_factory=dict)
    kept: dict[TapKey, np.ndarray] = field(default_factory=dict)  # reference tensors asked for
    seconds: dict[str, float] = field(default_factory=dict)


def compare_chunk(a: ChunkOutput, b: ChunkOutput, result: LockstepResult) -> list[pd.DataFrame]:
    frames = []
    positions = np.arange(b.start, b.start + b.n_tokens)
    result.only_a |= a.taps.keys() - b.taps.keys()
    result.only_b |= b.taps.keys() - a.taps.keys()
    for key in a.taps.keys() & b.taps.keys():
        ta, tb = a.taps[key], b.taps[key]
        if ta.shape != tb.shape:
            result.shape_mismatch[key] = (ta.shape, tb.shape)
            continue
        m = tap_metrics(key, a.taps, b.taps)
        frames.append(pd.DataFrame({"layer": key[1], "tap": key[0], "position": positions, **m}))
    return frames


def tap_metrics(key: TapKey, a: dict, b: dict) -> dict[str, np.ndarray]:
    """Per-position metrics of tap `key` between two runtimes' taps of one chunk; set taps (the
    router's top-k) are compared as sets, with the router logits if both captured them."""
    spec = TAPS.get(key[0])
    if spec is not None and spec.compare == "set":
        score = (SCORE_TAP, key[1])
        return set_metrics(a[key], b[key], a.get(score), b.get(score))
    return tensor_metrics(a[key], b[key])


def run_lockstep(a: Runtime, b: Runtime, token_ids: Sequence[int], chunk: int = 512,
                 keep: Callable[[TapKey], bool] = lambda key: False,
                 on_chunk: Callable[[int, int], None] | None = None,
                 follow: Callable[[dict], dict] | None = None) -> LockstepResult:
    """`a` is the runtime under test, `b` the reference. With `follow`, `b` runs each chunk
    first and `a` gets `patches=follow(b's taps)` (the MoE routers' choice,
    impdiff.compare.experts)."""
    import time

    result = LockstepResult(pd.DataFrame(columns=TAP_COLUMNS), pd.DataFrame())
    frames: list[pd.DataFrame] = []
    logit_frames: list[pd.DataFrame] = []
    kept: dict[TapKey, list[np.ndarray]] = {}
    seconds = {"a": 0.0, "b": 0.0, "compare": 0.0}
    for lo in range(0, len(token_ids), chunk):
        ids = token_ids[lo:lo + chunk]
        t0 = time.perf_counter()
        if follow is None:
            out_a = a.eval(ids)
            t1 = time.perf_counter()
            out_b = b.eval(ids)
            t2 = time.perf_counter()
        else:
            out_b = b.eval(ids)
            tb = time.perf_counter()
            out_a = a.eval(ids, patches=follow(out_b.taps))
            t2 = time.perf_counter()
            t1 = t0 + (t2 - tb)  # t1 - t0: a's time, t2 - t1: b's
        if out_a.start != out_b.start:
            raise RuntimeError(f"runtimes out of step: {out_a.start} vs {out_b.start}")
        frames += compare_chunk(out_a, out_b, result)
        lm = logit_metrics(out_a.logits, out_b.logits)
        logit_frames.append(pd.DataFrame({"position": np.arange(lo, lo + len(ids)), **lm}))
        for name, out in (("a", out_a), ("b", out_b)):
            if out.unmapped:
                result.unmapped.setdefault(name, set()).update(out.unmapped)
        for key, value in out_b.taps.items():
            if keep(key):
                kept.setdefault(key, []).append(value)
        del out_a, out_b
        seconds["a"] += t1 - t0
        seconds["b"] += t2 - t1
        seconds["compare"] += time.perf_counter() - t2
        if on_chunk:
            on_chunk(lo + len(ids), len(token_ids))
    if frames:
        result.taps = pd.concat(frames, ignore_index=True)
    result.logits = pd.concat(logit_frames, ignore_index=True)
    result.kept = {k: np.concatenate(v) for k, v in kept.items()}
    result.seconds = seconds
    return result
