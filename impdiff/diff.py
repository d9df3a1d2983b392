"""`impdiff diff`: two runtimes in lockstep (by default the engine and llama.cpp on one model),
the first divergence, and its cause.

Flow: runtimes -> lockstep taps -> metrics -> localisation -> substitution check -> tables.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from .compare.localise import LocaliseParams, Verdict, localise, noise_floor
from .compare.experts import SCORE_TAP, expert_choice, follow_router, with_router
from .engine.faults import FaultSet
from .engine.loader import LoadedModel
from .errors import UsageError
from .lockstep import LockstepResult, run_lockstep, tap_metrics
from .taps import GLOBAL_LAYER, TAPS, TapSelection


@dataclass
class DiffOutcome:
    verdict: Verdict
    summary: pd.DataFrame  # per (layer, tap), computation order
    floor: pd.Series  # per tap name
    lockstep: LockstepResult
    logits: dict[str, float]
    layer_kinds: dict[int, str]
    extra: dict = field(default_factory=dict)
    labels: tuple[str, str] = ("engine", "llama.cpp")  # how reports name runtime a and b
    specs: tuple[str, str] = ("", "")  # the runtime specs of a and b

    @property
    def diverged(self) -> bool:
        return self.verdict.diverged


def layer_kinds(loaded: LoadedModel) -> dict[int, str]:
    """'sliding attention' / 'global attention', and where it applies 'KV of layer N' (Gemma 4's
    KV-shared layers) and 'MoE'."""
    cfg, kinds = loaded.cfg, {}
    for i, layer in enumerate(cfg.layers):
        parts = [("sliding" if layer.swa else "global") + " attention"] if cfg.is_swa else []
        if layer.kv_layer != i:
            parts.append(f"KV of layer {layer.kv_layer}")
        if layer.n_expert:
            parts.append("MoE")
        if parts:
            kinds[i] = ", ".join(parts)
    return kinds


def input_key(layer: int, taps_available: set) -> tuple[str, int] | None:
    """The tap that feeds `layer` (what the substitution check replaces)."""
    if layer == GLOBAL_LAYER:
        return None
    if layer == 0:
        return ("inp_scaled", -1) if ("inp_scaled", -1) in taps_available else ("inp_embd", -1)
    return ("l_out", layer - 1)


def summarise_logits(df: pd.DataFrame) -> dict[str, float]:
    return {"top1": float(df.top1.mean()), "top5": float(df.top5.mean()),
            "kl_mean": float(df.kl.mean()), "kl_max": float(df.kl.max()),
            "kl_last": float(df.kl.iloc[-1]), "n_positions": int(len(df))}


def _spec(value, default_runtime: str, model_path):
    from .runtimes.registry import RuntimeSpec, parse_spec

    if isinstance(value, RuntimeSpec):
        return value
    if value is not None:
        return parse_spec(str(value), default_runtime)
    if model_path is None:
        raise ValueError("run_diff: give model_path or both runtime specs a= and b=")
    return RuntimeSpec(default_runtime, str(model_path))


def side_labels(spec_a, spec_b) -> tuple[str, str]:
    """How reports name the two sides: the runtime, or runtime:file when both run one runtime
    (two files on one runtime), or the dump's directory."""
    def label(spec):
        name = spec.factory.display
        if spec.runtime == "dump" or spec_a.runtime == spec_b.runtime:
            return f"{name}:{Path(spec.target).name}"
        return name

    la, lb = label(spec_a), label(spec_b)
    return (la, lb) if la != lb else (f"a={la}", f"b={lb}")


def run_diff(model_path: Path | None, token_ids: Sequence[int] | None, *,
             faults: FaultSet = FaultSet(),
             selection: TapSelection = TapSelection(), chunk: int = 512, device: str = "cpu",
             substitution: bool = True, params: LocaliseParams = LocaliseParams(),
             loaded: LoadedModel | None = None, out_dir: Path | None = None,
             on_chunk: Callable[[int, int], None] | None = None,
             on_stage: Callable[[str], None] = lambda s: None,
             a=None, b=None) -> DiffOutcome:
    """Runtime `a` (under test) against `b` (the reference) in lockstep on `token_ids`.

    `a`/`b` are runtime specs (`RuntimeSpec` or 'engine:x.gguf'); left out, they are
    `engine:model_path` and `llamacpp:model_path` (the classic engine-vs-llama.cpp diff).
    `faults` and `loaded` go to `a`, which must then be the engine. `token_ids=None` takes the
    ids a dump recorded (when a side is `dump:DIR`).
    """
    from .runtimes.registry import describe, open_runtime

    spec_a, spec_b = _spec(a, "engine", model_path), _spec(b, "llamacpp", model_path)
    info_a, info_b = describe(spec_a), describe(spec_b)
    for info in (info_a, info_b):
        if info.token_ids is not None:
            if token_ids is None:
                token_ids = info.token_ids
            elif list(token_ids) != info.token_ids:
                raise UsageError(f"{info.spec}: the dump recorded other token ids than this run "
                                 "evaluates (a dump's ids are used as recorded)")
    if token_ids is None:
        raise UsageError("no token ids: give a prompt or --tokens (or a dump:DIR side)")
    if info_a.n_vocab and info_b.n_vocab and info_a.n_vocab != info_b.n_vocab:
        raise UsageError(f"{spec_a} has a vocabulary of {info_a.n_vocab} tokens and {spec_b} of "
                         f"{info_b.n_vocab}: the logits cannot be compared")
    labels = side_labels(spec_a, spec_b)
    kinds = layer_kinds(loaded) if loaded is not None else (info_a.layer_kinds
                                                           or info_b.layer_kinds)
    n_ctx = len(token_ids) + 16
    opts = dict(n_ctx=n_ctx, n_ubatch=chunk, device=device)
    rt_a = open_runtime(spec_a, taps=selection, faults=faults or None, loaded=loaded, **opts)
    # MoE: the engine routes tokens to the experts llama.cpp picked (compare.experts)
    moe = getattr(getattr(rt_a, "loaded", None), "cfg", None)
    follow = follow_router if spec_a.factory.patches and moe is not None and moe.moe_layers \
        else None
    try:
        with open_runtime(spec_b, taps=with_router(selection) if follow else selection,
                          **opts) as ref:
            on_stage("lockstep")
            # the reference's layer inputs are kept: the substitution check needs any one of them
            result = run_lockstep(rt_a, ref, token_ids, chunk,
                                  keep=lambda k: k[0] in ("l_out", "inp_scaled", "inp_embd"),
                                  on_chunk=on_chunk, follow=follow)
        n_layer = info_b.n_layer or info_a.n_layer or (
            int(result.taps.layer.max()) + 1 if len(result.taps) else 0)
        verdict, summary = localise(result.taps, n_layer, kinds, params) \
            if len(result.taps) else (Verdict(False), pd.DataFrame())
        outcome = DiffOutcome(verdict, summary, noise_floor(result.taps, params)
                              if len(result.taps) else pd.Series(dtype=float),
                              result, summarise_logits(result.logits), kinds,
                              labels=labels, specs=(str(spec_a), str(spec_b)))
        outcome.extra["expert_choice"] = expert_choice(result.taps)  # per MoE layer
        if verdict.diverged and substitution:
            if not spec_a.factory.patches:
                verdict.substitution_detail = (
                    f"not run: {labels[0]} takes no patched activations (only the engine runtime "
                    "does), so whether the divergence is local to that layer or carried in is "
                    "not decided")
            else:
                on_stage("substitution check")
                reuse = {"loaded": rt_a.loaded} if hasattr(rt_a, "loaded") else {}
                substitution_check(
                    outcome, token_ids, chunk, out_dir,
                    open_a=lambda taps: open_runtime(spec_a, taps=taps, faults=faults or None,
                                                     **reuse, **opts),
                    open_b=lambda taps: open_runtime(spec_b, taps=taps, **opts))
    finally:
        rt_a.close()
    return outcome


def substitution_check(outcome: DiffOutcome, token_ids: Sequence[int], chunk: int,
                       out_dir: Path | None, open_a, open_b) -> None:
    """Feed the reference's input into the culprit layer of the runtime under test.

    If the culprit tap still diverges from a correct input, the bug is local to that layer; if
    the divergence disappears, it was carried in from earlier drift. `open_a(taps)` opens the
    runtime under test (it must take `patches`), `open_b(taps)` the reference.
    """
    v = outcome.verdict
    label_b = outcome.labels[1]
    key_in = input_key(v.layer, set(outcome.lockstep.kept))
    if key_in is None:
        v.substitution = "local (its only input is the token ids)"
        return
    if key_in not in outcome.lockstep.kept:
        v.substitution_detail = f"not run: the reference tap {key_in} was not captured"
        return
    # a set tap (the router's top-k) is judged as the verdict judged it: with the router logits
    # beside it where the diff compared them, else on the raw choice (with the logits of a
    # faulty router captured here only, its own error would widen the noise band enough to
    # call every swap noise, and a local fault would read as carried in)
    taps = outcome.lockstep.taps
    with_scores = TAPS[v.tap].compare == "set" and len(taps) > 0 and bool(
        ((taps.tap == SCORE_TAP) & (taps.layer == v.layer)).any())
    names = {v.tap, SCORE_TAP} if with_scores else {v.tap}
    focus = TapSelection(frozenset(names), frozenset({v.layer}))
    patch = {key_in: outcome.lockstep.kept[key_in]}
    patched = open_a(focus)
    try:
        with open_b(focus) as ref:
            a_parts, b_parts = [], []
            for lo in range(0, len(token_ids), chunk):
                ids = token_ids[lo:lo + chunk]
                sl = {k: arr[lo:lo + len(ids)] for k, arr in patch.items()}
                a_parts.append(patched.eval(ids, patches=sl).taps)
                b_parts.append(ref.eval(ids).taps)
    finally:
        patched.close()
    a, b = ({k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
            for parts in (a_parts, b_parts))
    err = tap_metrics((v.tap, v.layer), a, b)["rel_l2"]
    a, b = a[(v.tap, v.layer)], b[(v.tap, v.layer)]
    still = int((err[v.positions] > v.threshold).sum()) if v.positions else 0
    frac = still / max(len(v.positions), 1)
    before = v.error
    after = float(np.median(err[v.positions])) if v.positions else 0.0
    if frac >= 0.5:
        v.substitution = "local to that layer"
    else:
        v.substitution = "carried in from earlier layers"
    v.substitution_detail = (
        f"with {label_b}'s {key_in[0]}{'' if key_in[1] < 0 else '@' + str(key_in[1])} fed in, "
        f"`{v.tap}` error at the divergent positions went from {before:.3g} to {after:.3g} "
        f"({still}/{len(v.positions)} still above threshold)")
    if out_dir is not None:
        np.savez_compressed(out_dir / "culprit_tensors.npz", engine_patched=a, llamacpp=b,
                            positions=np.array(v.positions))


def write_tables(outcome: DiffOutcome, out_dir: Path, meta: dict) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    taps = outcome.lockstep.taps
    if len(taps):
        p = out_dir / "taps.parquet"
        taps.to_parquet(p, index=False)
        paths.append(p)
    for name, df in (("summary.csv", outcome.summary), ("logits.csv", outcome.lockstep.logits)):
        df.to_csv(out_dir / name, index=False)
        paths.append(out_dir / name)
    record = {
        "verdict": asdict(outcome.verdict) | {
            "sentence": outcome.verdict.sentence(*outcome.labels)},
        "noise_floor": outcome.floor.to_dict(),
        "logits": outcome.logits,
        "runtimes": {"a": outcome.specs[0], "b": outcome.specs[1],
                     "labels": list(outcome.labels)},
        "only_engine": sorted(map(list, outcome.lockstep.only_a)),
        "only_llamacpp": sorted(map(list, outcome.lockstep.only_b)),
        "shape_mismatch": {f"{k[0]}@{k[1]}": [list(x) for x in v]
                           for k, v in outcome.lockstep.shape_mismatch.items()},
        "unmapped": {k: sorted(v) for k, v in outcome.lockstep.unmapped.items()},
        "expert_choice": (outcome.extra["expert_choice"].to_dict("records")
                          if "expert_choice" in outcome.extra else []),
        "seconds": outcome.lockstep.seconds,
        **meta,
    }
    record["verdict"]["positions"] = outcome.verdict.positions[:4096]
    (out_dir / "verdict.json").write_text(json.dumps(record, indent=2, default=str))
    paths.append(out_dir / "verdict.json")
    return paths
