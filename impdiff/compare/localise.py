"""From per-position metrics to a verdict: noise floor, first divergent (layer, tap), positions.

Two runtimes never agree exactly: llama.cpp quantises activations for its quantised matmuls,
keeps the KV cache in F16 and sums in another order. That noise is estimated from the run
itself, per tap: the floor is the median over layers of each layer's 10th-percentile error over
positions (the cleanest positions: a window bug leaves the ones inside the window alone). On a Q4_K
model against llama.cpp that noise is local, not accumulated: every quantised matmul adds 1-3%
(llama.cpp rounds activations to 8 bits), and it stays flat with depth (measured on
gemma3-270m: 0.8-5% per tap). A (layer, tap) diverges when enough of its
positions rise clearly above its floor; the first one in computation order is the culprit.

The floor alone misses a fault whose error propagates into most layers (the median over layers
is then polluted). A second test catches those: each tap's error relative to the error of the
taps it is computed from (its parents, `impdiff.taps`), against that ratio's typical value for
the tap. A local fault multiplies the ratio at one place; drift and noise keep it steady. On the
clean gemma3-270m run no (layer, tap) has more than 9% of positions jumping 8x; the faults jump
at 26-100% of positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import pandas as pd

from ..taps import GLOBAL_LAYER, TAP_ORDER, TAPS

METRIC = "rel_l2"


@dataclass(frozen=True)
class LocaliseParams:
    position_quantile: float = 0.1  # of each layer's errors over positions, the median over
    # layers of that is the floor: robust to faults in every layer at 90% of the positions
    factor: float = 15.0  # a position diverges above factor x floor ...
    min_error: float = 0.01  # ... and above this relative L2 error, whatever the floor
    max_floor: float = 0.1  # a floor above this means the whole run is off, not noisy
    max_threshold: float = 0.5  # ... and an error above this is never noise, even then (a fault
    # in every layer, e.g. one applied to all MoE routers, leaves no clean layer for a floor)
    min_positions: int = 3  # a (layer, tap) diverges when at least this many positions do ...
    min_fraction: float = 0.02  # ... and at least this fraction of its positions
    jump: float = 8.0  # a position jumps when its error/input-error ratio is this x typical ...
    jump_fraction: float = 0.25  # ... and a (layer, tap) jumps when this fraction of positions do


@dataclass
class Verdict:
    diverged: bool
    layer: int | None = None
    tap: str | None = None
    layer_kind: str = ""
    positions: list[int] = field(default_factory=list)
    positions_text: str = ""
    error: float = 0.0  # median error over the divergent positions
    threshold: float = 0.0
    n_positions: int = 0
    substitution: str = ""  # "local" | "carried in" | "" (not run)
    substitution_detail: str = ""

    def sentence(self, a: str = "engine", b: str = "llama.cpp") -> str:
        if not self.diverged:
            return f"{a} agrees with {b}: no tap rises above its noise floor"
        where = "before the first layer" if self.layer == GLOBAL_LAYER else (
            f"at layer {self.layer}" + (f" ({self.layer_kind})" if self.layer_kind else ""))
        if self.tap in TAPS and TAPS[self.tap].compare == "set":  # the router's top-k
            s = (f"{a} diverges from {b} {where}: a different expert was picked (`{self.tap}`), "
                 f"{self.positions_text} ({self.error:.3g} of the picks differ beyond router "
                 f"noise vs threshold {self.threshold:.3g})")
        else:
            s = (f"{a} diverges from {b} {where}, `{self.tap}`, {self.positions_text} "
                 f"(rel. L2 {self.error:.3g} vs threshold {self.threshold:.3g})")
        if self.substitution:
            s += f"; {self.substitution}"
        return s


def order_key(tap: str, layer: int, n_layer: int) -> tuple[int, int]:
    """Computation order: globals before layer 0 (embeddings) or after the last (output)."""
    if layer == GLOBAL_LAYER:
        layer = n_layer if tap.startswith("result") else -1
    return layer, TAP_ORDER.get(tap, 999)


def noise_floor(taps: pd.DataFrame, params: LocaliseParams = LocaliseParams(),
                layers: Iterable[int] | None = None) -> pd.Series:
    """Per tap name: the floor of its relative error (see module doc), over `layers` if given."""
    if layers is not None:
        taps = taps[taps.layer.isin(list(layers))]
    per_layer = taps.groupby(["tap", "layer"])[METRIC].quantile(params.position_quantile)
    floor = per_layer.groupby(level="tap").median()
    return floor.clip(upper=params.max_floor)


def thresholds(floor: pd.Series, params: LocaliseParams) -> pd.Series:
    return np.maximum(floor * params.factor, params.min_error).clip(upper=params.max_threshold)


def describe_positions(positions: list[int], total: list[int] | None = None) -> str:
    """'positions ≥ 512' when they fill the tail from some point on, else ranges.

    A window bug shows at most positions past the window but not all (a few tokens attend
    mostly nearby anyway), so "most of the tail" still reads as a tail.
    """
    if not positions:
        return "no positions"
    ps = sorted(positions)
    if total is not None and len(ps) > 1:
        tail = [p for p in total if p >= ps[0]]
        if ps[0] == min(total) and len(ps) >= 0.95 * len(total):
            return "all positions"
        if ps[0] == min(total):
            return f"most positions ({len(ps)} of {len(total)})"
        if len(ps) >= 0.5 * len(tail):
            coverage = "" if len(ps) == len(tail) else f" ({len(ps)} of the {len(tail)} from there)"
            return f"positions ≥ {ps[0]}{coverage}"
    ranges, lo, prev = [], ps[0], ps[0]
    for p in ps[1:] + [None]:
        if p is not None and p == prev + 1:
            prev = p
            continue
        ranges.append(f"{lo}" if lo == prev else f"{lo}-{prev}")
        if p is not None:
            lo = prev = p
    shown = ", ".join(ranges[:6]) + (f", … ({len(ranges) - 6} more ranges)" if len(ranges) > 6
                                      else "")
    return f"position{'s' if len(ps) > 1 else ''} {shown}"


def parent_keys(tap: str, layer: int, n_layer: int, present: set) -> list[tuple[int, str]]:
    """The (layer, tap) entries `tap` at `layer` is computed from, among those present."""
    if tap == "attn_norm":
        candidates = [(layer - 1, "l_out")] if layer > 0 else []
    elif tap == "result_norm":
        candidates = [(n_layer - 1, "l_out")]
    else:
        spec = TAPS.get(tap)
        candidates = [(layer, p) for p in (spec.parents if spec else ())]
    found = [k for k in candidates if k in present]
    return found[:1] if tap in TAPS and TAPS[tap].parents_first else found


def jump_flags(taps: pd.DataFrame, floor: pd.Series, n_layer: int,
               params: LocaliseParams) -> pd.Series:
    """Per (layer, tap, position): does its error jump past what its inputs' error explains?"""
    piv = taps.pivot_table(index=["layer", "tap"], columns="position", values=METRIC)
    present = set(piv.index)
    rows, keys = [], []
    for layer, tap in piv.index:
        parents = parent_keys(tap, layer, n_layer, present)
        if not parents:
            continue
        # a parent's error never counts below its floor: identical inputs (layer 0's norm)
        # still meet the other runtime's own rounding inside the op
        inp = np.max([np.maximum(piv.loc[k].to_numpy(), floor.get(k[1], 0.0)) for k in parents],
                     axis=0)
        rows.append(piv.loc[(layer, tap)].to_numpy() / np.maximum(inp, 1e-12))
        keys.append((layer, tap))
    if not rows:
        return pd.Series(False, index=pd.MultiIndex.from_arrays([[], [], []]), dtype=bool,
                         name="jump")
    ratio = pd.DataFrame(rows, index=pd.MultiIndex.from_tuples(keys, names=["layer", "tap"]),
                         columns=piv.columns)
    typical = ratio.median(axis=1).groupby(level="tap").median()
    jumps = ratio.div(ratio.index.get_level_values("tap").map(typical).to_numpy(), axis=0)
    flags = (jumps >= params.jump) & (piv.loc[ratio.index] > params.min_error)
    return flags.stack().rename("jump")


def summarise(taps: pd.DataFrame, floor: pd.Series, n_layer: int,
              params: LocaliseParams) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-position `above` flags and the per-(layer, tap) table in computation order."""
    df = taps.assign(threshold=taps["tap"].map(thresholds(floor, params)))
    df["above"] = (df[METRIC] > df["threshold"]) & df["tap"].map(
        lambda t: TAPS[t].local_noise if t in TAPS else True).astype(bool)
    jumps = jump_flags(taps, floor, n_layer, params)
    df = df.join(jumps, on=["layer", "tap", "position"])
    df["jump"] = df["jump"].fillna(False).astype(bool)
    summary = df.groupby(["layer", "tap"]).agg(
        median=(METRIC, "median"), p99=(METRIC, lambda s: s.quantile(0.99)),
        max=(METRIC, "max"), cos_min=("cos", "min"), n_above=("above", "sum"),
        n_jump=("jump", "sum"), n=("above", "size"),
        threshold=("threshold", "first")).reset_index()
    summary["floor"] = summary["tap"].map(floor)
    by_floor = (summary["n_above"] >= params.min_positions) & (
        summary["n_above"] >= params.min_fraction * summary["n"])
    by_jump = summary["n_jump"] >= np.maximum(params.min_positions,
                                              params.jump_fraction * summary["n"])
    summary["diverged"] = by_floor | by_jump
    summary["by"] = np.where(by_floor, "floor", np.where(by_jump, "jump", ""))
    summary["order"] = [order_key(t, l, n_layer) for t, l in zip(summary.tap, summary.layer)]
    summary = summary.sort_values("order").drop(columns="order").reset_index(drop=True)
    return df, summary


def localise(taps: pd.DataFrame, n_layer: int, layer_kinds: dict[int, str] | None = None,
             params: LocaliseParams = LocaliseParams()) -> tuple[Verdict, pd.DataFrame]:
    """The verdict and a per-(layer, tap) summary table ranked in computation order.

    A divergence pollutes every layer after it, and with it the median that the floor is: a
    fault at layer 5 of 18 makes most layers noisy. So once the culprit layer is known, its
    verdict (tap, positions, error) is re-read against the floor of the clean layers before
    it; only taps up to the first culprit are reconsidered, so the lower floor cannot invent
    a divergence earlier than the one the run showed.
    """
    df, summary = summarise(taps, noise_floor(taps, params), n_layer, params)
    hits = summary[summary["diverged"]]
    if hits.empty:
        return Verdict(False), summary
    first = hits.iloc[0]
    layer = int(first.layer)
    clean_layers = [l for l in sorted(taps.layer.unique()) if 0 <= l < layer]
    if len(clean_layers) >= 2:
        upto = order_key(first.tap, layer, n_layer)
        at_layer = taps[(taps.layer == layer) & taps.tap.map(
            lambda t: order_key(t, layer, n_layer) <= upto)]
        r_df, r_summary = summarise(at_layer, noise_floor(taps, params, clean_layers), n_layer,
                                    params)
        r_hits = r_summary[r_summary["diverged"]]
        if not r_hits.empty:
            df, first = r_df, r_hits.iloc[0]
    rows = df[(df.layer == first.layer) & (df.tap == first.tap)]
    by_floor = first.n_above >= params.min_positions and (
        first.n_above >= params.min_fraction * first.n)
    bad = rows[rows.above] if by_floor else rows[rows.jump]
    positions = bad.position.astype(int).tolist()
    return Verdict(
        diverged=True, layer=layer, tap=str(first.tap),
        layer_kind=(layer_kinds or {}).get(layer, ""),
        positions=positions,
        positions_text=describe_positions(positions, rows.position.astype(int).tolist()),
        error=float(bad[METRIC].median()), threshold=float(first.threshold),
        n_positions=len(positions),
    ), summary
