"""`impdiff diff`: engine and llama.cpp in lockstep, the first divergence, and its cause.

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
from .compare.metrics import tensor_metrics
from .engine.faults import FaultSet
from .engine.loader import LoadedModel, load_gguf_model
from .lockstep import LockstepResult, run_lockstep
from .runtimes.engine import EngineRuntime
from .runtimes.llamacpp import LlamaCppRuntime
from .taps import GLOBAL_LAYER, TapSelection


@dataclass
class DiffOutcome:
    verdict: Verdict
    summary: pd.DataFrame  # per (layer, tap), computation order
    floor: pd.Series  # per tap name
    lockstep: LockstepResult
    logits: dict[str, float]
    layer_kinds: dict[int, str]
    extra: dict = field(default_factory=dict)

    @property
    def diverged(self) -> bool:
        return self.verdict.diverged


def layer_kinds(loaded: LoadedModel) -> dict[int, str]:
    cfg = loaded.cfg
    if not cfg.is_swa:
        return {}
    return {i: "sliding attention" if cfg.layer_is_swa(i) else "global attention"
            for i in range(cfg.n_layer)}


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


def run_diff(model_path: Path, token_ids: Sequence[int], *, faults: FaultSet = FaultSet(),
             selection: TapSelection = TapSelection(), chunk: int = 512, device: str = "cpu",
             substitution: bool = True, params: LocaliseParams = LocaliseParams(),
             loaded: LoadedModel | None = None, out_dir: Path | None = None,
             on_chunk: Callable[[int, int], None] | None = None,
             on_stage: Callable[[str], None] = lambda s: None) -> DiffOutcome:
    loaded = loaded or load_gguf_model(model_path, device, faults)
    n_ctx = len(token_ids) + 16
    kinds = layer_kinds(loaded)
    engine = EngineRuntime(model_path, taps=selection, n_ctx=n_ctx, n_ubatch=chunk, loaded=loaded)
    with LlamaCppRuntime(model_path, taps=selection, n_ctx=n_ctx, n_ubatch=chunk) as ref:
        on_stage("lockstep")
        # the reference's layer inputs are kept: the substitution check needs any one of them
        result = run_lockstep(engine, ref, token_ids, chunk,
                              keep=lambda k: k[0] in ("l_out", "inp_scaled", "inp_embd"),
                              on_chunk=on_chunk)
    verdict, summary = localise(result.taps, loaded.cfg.n_layer, kinds, params) \
        if len(result.taps) else (Verdict(False), pd.DataFrame())
    outcome = DiffOutcome(verdict, summary, noise_floor(result.taps, params)
                          if len(result.taps) else pd.Series(dtype=float),
                          result, summarise_logits(result.logits), kinds)
    if verdict.diverged and substitution:
        on_stage("substitution check")
        substitution_check(outcome, loaded, model_path, token_ids, chunk, out_dir)
    return outcome


def substitution_check(outcome: DiffOutcome, loaded: LoadedModel, model_path: Path,
                       token_ids: Sequence[int], chunk: int, out_dir: Path | None) -> None:
    """Feed the reference's input into the culprit layer of the engine.

    If the culprit tap still diverges from a correct input, the bug is local to that layer; if
    the divergence disappears, it was carried in from earlier drift.
    """
    v = outcome.verdict
    key_in = input_key(v.layer, set(outcome.lockstep.kept))
    if key_in is None:
        v.substitution = "local (its only input is the token ids)"
        return
    if key_in not in outcome.lockstep.kept:
        v.substitution_detail = f"not run: the reference tap {key_in} was not captured"
        return
    focus = TapSelection(frozenset({v.tap}), frozenset({v.layer}))
    patch = {key_in: outcome.lockstep.kept[key_in]}
    n_ctx = len(token_ids) + 16
    patched = EngineRuntime(model_path, taps=focus, n_ctx=n_ctx, n_ubatch=chunk, loaded=loaded)
    with LlamaCppRuntime(model_path, taps=focus, n_ctx=n_ctx, n_ubatch=chunk) as ref:
        a_parts, b_parts = [], []
        for lo in range(0, len(token_ids), chunk):
            ids = token_ids[lo:lo + chunk]
            sl = {k: arr[lo:lo + len(ids)] for k, arr in patch.items()}
            a_parts.append(patched.eval(ids, patches=sl).taps[(v.tap, v.layer)])
            b_parts.append(ref.eval(ids).taps[(v.tap, v.layer)])
    a, b = np.concatenate(a_parts), np.concatenate(b_parts)
    err = tensor_metrics(a, b)["rel_l2"]
    still = int((err[v.positions] > v.threshold).sum()) if v.positions else 0
    frac = still / max(len(v.positions), 1)
    before = v.error
    after = float(np.median(err[v.positions])) if v.positions else 0.0
    if frac >= 0.5:
        v.substitution = "local to that layer"
    else:
        v.substitution = "carried in from earlier layers"
    v.substitution_detail = (
        f"with llama.cpp's {key_in[0]}{'' if key_in[1] < 0 else '@' + str(key_in[1])} fed in, "
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
        "verdict": asdict(outcome.verdict) | {"sentence": outcome.verdict.sentence()},
        "noise_floor": outcome.floor.to_dict(),
        "logits": outcome.logits,
        "only_engine": sorted(map(list, outcome.lockstep.only_a)),
        "only_llamacpp": sorted(map(list, outcome.lockstep.only_b)),
        "shape_mismatch": {f"{k[0]}@{k[1]}": [list(x) for x in v]
                           for k, v in outcome.lockstep.shape_mismatch.items()},
        "unmapped": {k: sorted(v) for k, v in outcome.lockstep.unmapped.items()},
        "seconds": outcome.lockstep.seconds,
        **meta,
    }
    record["verdict"]["positions"] = outcome.verdict.positions[:4096]
    (out_dir / "verdict.json").write_text(json.dumps(record, indent=2, default=str))
    paths.append(out_dir / "verdict.json")
    return paths
