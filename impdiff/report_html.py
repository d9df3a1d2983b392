"""The HTML divergence report: one self-contained page per run directory.

Pure functions, one way: `load_run(dir)` reads what a `diff`, `bracket`, `battery` or `gate` run
saved into a
small `ReportData`; `figures(data)` draws the evidence (matplotlib PNGs as base64 data URIs);
`render(data, figs)` fills `templates/report.html.j2`. `write_report(dir)` does all three and
writes `report.html` beside the run's data files, so `impdiff report DIR` rebuilds it any time.

The page runs nothing: model output, prompts and commands are untrusted text, so the template
autoescapes everything, carries no JavaScript, and a Content-Security-Policy forbids scripts and
any load other than inline styles and `data:` images.

Two small files are derived beside the run's own data so a report can be rebuilt where neither
the model nor the full tap table is at hand (a committed example): `report_positions.csv`, the
per-position error of the plotted taps (written from `taps.parquet` when that is present), and
`report.json`, what was read from the model's GGUF (sliding window, layer kinds).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import shlex
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import UsageError
from .taps import GLOBAL_LAYER, TAP_ORDER

REPORT_NAME = "report.html"
POSITIONS_NAME = "report_positions.csv"
CONTEXT_NAME = "report.json"
TEMPLATE_DIR = Path(__file__).parent / "templates"
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
DIFF_FILES = ("verdict.json", "summary.csv", "logits.csv")
BATTERY_NAME = "battery.json"
RUN_FILES = {*DIFF_FILES, "taps.parquet", "run.json", "results.jsonl", "outcome.json",
             "junit.xml", "summary.md", BATTERY_NAME}


@dataclass
class DiffData:
    """What one layer diff saved (a `diff` run dir, or a bracket's `diff/` subdir)."""

    path: Path
    record: dict  # verdict.json
    summary: pd.DataFrame  # per (layer, tap), computation order
    logits: pd.DataFrame  # per position
    positions: pd.DataFrame  # per-position error of the plotted taps (role, layer, tap, ...)
    positions_derived: bool = False  # read from taps.parquet now (saved beside it on write)

    @property
    def verdict(self) -> dict:
        return self.record.get("verdict", {})

    @property
    def diverged(self) -> bool:
        return bool(self.verdict.get("diverged"))

    @property
    def labels(self) -> tuple[str, str]:
        """How the run named its two sides (runtime a under test, b the reference)."""
        labels = (self.record.get("runtimes") or {}).get("labels") or ["engine", "llama.cpp"]
        return str(labels[0]), str(labels[1])

    @property
    def sentence(self) -> str:
        v = self.verdict
        if v.get("sentence"):
            return v["sentence"]
        from .compare.localise import Verdict

        fields = {k: v[k] for k in Verdict.__dataclass_fields__ if k in v}
        return Verdict(**fields).sentence() if "diverged" in fields else "no verdict saved"


@dataclass
class ReportData:
    run_dir: Path
    kind: str  # "diff" | "bracket" | "battery" | "gate"
    sentence: str  # the verdict, one sentence
    status: str  # "diverged" | "clean" | "regressed" | "incomplete"
    secondary: list[str] = field(default_factory=list)  # further verdict lines
    meta: dict = field(default_factory=dict)  # command, versions, model_path, model_sha256
    diff: DiffData | None = None
    results: list[dict] = field(default_factory=list)  # bracket recall checks
    config: dict = field(default_factory=dict)  # bracket config
    outcome: dict = field(default_factory=dict)  # bracket outcome.json
    gate_checks: list[dict] = field(default_factory=list)  # from junit.xml
    sliding_window: int | None = None
    layer_kinds: dict[int, str] = field(default_factory=dict)
    n_layer: int | None = None
    sentinel_token: int | None = None
    created: str = ""
    context: dict = field(default_factory=dict)  # what report.json keeps (read from the GGUF)
    prompts: list[dict] = field(default_factory=list)  # battery: one row per prompt
    labels: tuple[str, str] = ("engine", "llama.cpp")  # battery: runtime under test, reference

    @property
    def boundary(self) -> dict | None:
        return self.outcome.get("boundary")


# --------------------------------------------------------------------------------------- loading

def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise UsageError(f"{path}: cannot read it ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a JSON object")
    return data


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except (OSError, pd.errors.ParserError) as exc:
        raise UsageError(f"{path}: cannot read it as CSV ({exc})") from None


def is_diff_dir(path: Path) -> bool:
    return (path / "verdict.json").is_file()


def is_bracket_dir(path: Path) -> bool:
    return (path / "run.json").is_file()


def is_battery_dir(path: Path) -> bool:
    return (path / BATTERY_NAME).is_file()


def check_run_dir(run_dir: Path) -> None:
    """Raise a one-line UsageError naming the dir and what is missing unless it is a run dir."""
    if not run_dir.exists():
        raise UsageError(f"{run_dir}: no such directory")
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir}: not a directory (expected an impdiff run directory)")
    if is_bracket_dir(run_dir):
        if not (run_dir / "results.jsonl").is_file():
            raise UsageError(f"{run_dir}: has run.json but no results.jsonl (the run stopped "
                             "before its first recall check)")
        return
    if is_battery_dir(run_dir):
        return
    if is_diff_dir(run_dir):
        missing = [n for n in DIFF_FILES if not (run_dir / n).is_file()]
        if missing:
            raise UsageError(f"{run_dir}: diff run directory without {', '.join(missing)}")
        return
    raise UsageError(f"{run_dir}: not an impdiff run directory (no verdict.json from "
                     "`impdiff diff`, no run.json from `impdiff bracket` / `impdiff gate`, no "
                     f"{BATTERY_NAME} from `impdiff battery`)")


def plotted_taps(summary: pd.DataFrame, verdict: dict) -> list[tuple[str, int, str]]:
    """(role, layer, tap) whose error by position the report shows.

    Diverged: the culprit and the input of its layer (clean input + dirty output = local bug).
    Clean: the (layer, tap) that came closest to its threshold.
    """
    if summary.empty:
        return []
    if verdict.get("diverged") and verdict.get("tap") is not None:
        layer, tap = int(verdict["layer"]), str(verdict["tap"])
        out = [("culprit", layer, tap)]
        if layer > 0:
            out.append(("input", layer - 1, "l_out"))
        elif layer == 0:
            present = set(summary.tap[summary.layer == GLOBAL_LAYER])
            name = "inp_scaled" if "inp_scaled" in present else "inp_embd"
            if name in present:
                out.append(("input", GLOBAL_LAYER, name))
        return out
    s = summary[summary["p99"] > 0]
    if s.empty:
        return []
    row = s.loc[(s["p99"] / s["threshold"]).idxmax()]
    return [("closest", int(row.layer), str(row.tap))]


def extract_positions(diff_dir: Path, summary: pd.DataFrame, verdict: dict) -> pd.DataFrame:
    """Per-position error of the plotted taps, from taps.parquet (only their rows are read)."""
    wanted = plotted_taps(summary, verdict)
    frames = []
    for role, layer, tap in wanted:
        df = pd.read_parquet(diff_dir / "taps.parquet",
                             columns=["layer", "tap", "position", "rel_l2", "cos"],
                             filters=[("tap", "==", tap), ("layer", "==", layer)])
        thr = summary.loc[(summary.layer == layer) & (summary.tap == tap), "threshold"]
        threshold = float(thr.iloc[0]) if len(thr) else np.nan
        if role == "culprit" and verdict.get("threshold"):
            threshold = float(verdict["threshold"])  # re-read against the clean layers' floor
        df = df.sort_values("position").assign(role=role, threshold=threshold)
        frames.append(df[["role", "layer", "tap", "position", "rel_l2", "cos", "threshold"]])
    if not frames:
        return pd.DataFrame(columns=["role", "layer", "tap", "position", "rel_l2", "cos",
                                     "threshold"])
    return pd.concat(frames, ignore_index=True)


def load_diff(diff_dir: Path) -> DiffData:
    missing = [n for n in DIFF_FILES if not (diff_dir / n).is_file()]
    if missing:
        raise UsageError(f"{diff_dir}: diff run directory without {', '.join(missing)}")
    record = _read_json(diff_dir / "verdict.json")
    summary = _read_csv(diff_dir / "summary.csv")
    logits = _read_csv(diff_dir / "logits.csv")
    pos_path = diff_dir / POSITIONS_NAME
    derived = (diff_dir / "taps.parquet").is_file()
    if derived:
        positions = extract_positions(diff_dir, summary, record.get("verdict", {}))
    elif pos_path.is_file():
        positions = _read_csv(pos_path)
    else:
        positions = pd.DataFrame()
    return DiffData(diff_dir, record, summary, logits, positions, derived)


def model_context(model_path: str | None, saved: dict) -> dict:
    """Sliding window and layer kinds from the model's GGUF; else what an earlier render saved."""
    if model_path and Path(model_path).is_file():
        try:
            from .engine.config import config_from_gguf
            from .engine.gguf_file import GGUFFile

            gf = GGUFFile(model_path)
            arch = gf.architecture
            window = gf.get(f"{arch}.attention.sliding_window")
            ctx = {"arch": arch, "sliding_window": int(window) if window else None,
                   "layer_kinds": {}, "n_layer": None}
            try:
                cfg = config_from_gguf(gf)
                ctx["n_layer"] = cfg.n_layer
                if cfg.is_swa:
                    ctx["layer_kinds"] = {
                        str(i): "sliding attention" if cfg.layer_is_swa(i) else
                        "global attention" for i in range(cfg.n_layer)}
            except Exception:  # an architecture the engine does not know: kinds stay unknown
                pass
            return ctx
        except Exception:
            pass
    return {k: saved.get(k) for k in ("arch", "sliding_window", "layer_kinds", "n_layer")}


def gate_line(checks: list[dict]) -> str:
    """The gate's outcome as one sentence (brackets and batteries alike)."""
    failed = [c for c in checks if not c["ok"]]
    line = ("gate passes: no regression against the baseline" if not failed else
            "gate fails: " + "; ".join(c["message"] for c in failed))
    return line[0].upper() + line[1:] + "."


def _gate_checks(path: Path) -> list[dict]:
    try:
        suite = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return []
    out = []
    for case in suite.iter("testcase"):
        failure = case.find("failure")
        out.append({"name": case.get("name", ""), "ok": failure is None,
                    "message": "" if failure is None else failure.get("message", "")})
    return out


def load_run(run_dir: str | Path) -> ReportData:
    run_dir = Path(run_dir)
    check_run_dir(run_dir)
    saved_ctx = _read_json(run_dir / CONTEXT_NAME) if (run_dir / CONTEXT_NAME).is_file() else {}
    if is_bracket_dir(run_dir):
        data = _load_bracket(run_dir)
    elif is_battery_dir(run_dir):
        data = _load_battery(run_dir)
    else:
        diff = load_diff(run_dir)
        meta = {k: diff.record.get(k) for k in ("command", "argv", "versions", "model",
                                                "model_sha256", "n_tokens", "inject", "prompt")
                if diff.record.get(k) is not None}
        parent = run_dir.parent / "run.json"
        if parent.is_file():  # a bracket's diff/ subdir: the bracket knows the rest
            pmeta = _read_json(parent)
            for k in ("command", "versions", "model_sha256"):
                meta.setdefault(k, pmeta.get(k))
            meta.setdefault("model", pmeta.get("model_path"))
        meta["model_path"] = meta.pop("model", None)
        data = ReportData(run_dir, "diff", diff.sentence,
                          "diverged" if diff.diverged else "clean", meta=meta, diff=diff)
        v = diff.verdict
        if v.get("substitution_detail"):
            data.secondary.append(f"Substitution check: {v['substitution_detail']}.")
    if data.diff is not None and data.diff.record.get("sentinel_token") is not None:
        data.sentinel_token = int(data.diff.record["sentinel_token"])
    ctx = model_context(data.meta.get("model_path"), saved_ctx)
    if data.diff is not None and data.diff.record.get("layer_kinds"):
        ctx["layer_kinds"] = data.diff.record["layer_kinds"]  # what the diff itself saw
    data.sliding_window = ctx.get("sliding_window")
    data.layer_kinds = {int(k): v for k, v in (ctx.get("layer_kinds") or {}).items()}
    data.n_layer = ctx.get("n_layer")
    if data.diff is not None and not data.layer_kinds:
        kind = data.diff.verdict.get("layer_kind")
        if kind and data.diff.verdict.get("layer") is not None:
            data.layer_kinds = {int(data.diff.verdict["layer"]): kind}
    # when the run wrote its data: kept in report.json, as a checkout resets file times
    newest = max((p.stat().st_mtime for p in run_dir.iterdir() if p.name in RUN_FILES),
                 default=time.time())
    data.created = saved_ctx.get("created") or time.strftime("%Y-%m-%d %H:%M",
                                                             time.localtime(newest))
    data.context = {**ctx, "layer_kinds": {str(k): v for k, v in data.layer_kinds.items()},
                    "created": data.created}
    return data


def _load_bracket(run_dir: Path) -> ReportData:
    run = _read_json(run_dir / "run.json")
    results = []
    for line in (run_dir / "results.jsonl").read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by an interruption
        if isinstance(r, dict) and {"runtime", "length", "passed"} <= r.keys():
            results.append(r)
    outcome = _read_json(run_dir / "outcome.json") if (run_dir / "outcome.json").is_file() else {}
    checks = _gate_checks(run_dir / "junit.xml") if (run_dir / "junit.xml").is_file() else []
    command = str(run.get("command", ""))
    kind = "gate" if checks or " gate " in f" {command} " else "bracket"
    meta = {k: run.get(k) for k in ("command", "versions", "model_path", "model_sha256")}
    diff = load_diff(run_dir / "diff") if is_diff_dir(run_dir / "diff") else None
    summary_line = outcome.get("summary") or (
        f"incomplete run: {len(results)} recall checks saved, no outcome yet")
    boundary = outcome.get("boundary")
    if not outcome:
        status = "incomplete"
    elif boundary:
        status = "regressed"
    else:
        status = "clean"
    secondary = []
    if diff is not None and diff.diverged:
        sentence = diff.sentence
        secondary.append(f"Found by the recall bracket: {summary_line}.")
        if diff.verdict.get("substitution_detail"):
            secondary.append(f"Substitution check: {diff.verdict['substitution_detail']}.")
        status = "diverged"
    else:
        sentence = summary_line
        if diff is not None:
            secondary.append(f"Layer diff at {boundary['first_fail'] if boundary else '?'} "
                             f"tokens: {diff.sentence}.")
    if kind == "gate" and checks:
        secondary.insert(0, gate_line(checks))
        if not all(c["ok"] for c in checks) and status == "clean":
            status = "regressed"
    return ReportData(run_dir, kind, sentence, status, secondary, meta, diff, results,
                      run.get("config", {}), outcome, checks)


def battery_rows(run_dir: Path, results: list[dict]) -> list[dict]:
    """One row per prompt; `diff` names the prompt's layer-diff subdir where one was saved."""
    rows = []
    for r in results:
        sub = Path(str(r.get("diff_dir") or "")).name
        rows.append({**r, "agree": r.get("first_divergence") is None,
                     "diff": sub if sub and is_diff_dir(run_dir / sub) else None})
    return rows


def _load_battery(run_dir: Path) -> ReportData:
    """A battery (or a battery gate): the prompt table on top; the layer evidence shown is the
    diff of the first prompt whose diff diverged (the others have pages of their own)."""
    record = _read_json(run_dir / BATTERY_NAME)
    prompts = battery_rows(run_dir, [r for r in record.get("results") or []
                                     if isinstance(r, dict) and "id" in r])
    checks = _gate_checks(run_dir / "junit.xml") if (run_dir / "junit.xml").is_file() else []
    labels = tuple(record.get("labels") or ("engine", "llama.cpp"))[:2]
    culprit = next((p for p in prompts if p.get("diff_diverged") and p["diff"]), None)
    diff = load_diff(run_dir / culprit["diff"]) if culprit else None
    secondary = []
    if culprit:
        secondary.append(f"Layer diff of `{culprit['id']}` up to its first divergent token: "
                         f"{diff.sentence}.")
    # any prompt whose token streams part is a divergence (the battery exits 1), near tie or not
    status = "clean" if all(p["agree"] and not p.get("diff_diverged") for p in prompts) \
        else "diverged"
    if checks:
        secondary.insert(0, gate_line(checks))
        status = "clean" if all(c["ok"] for c in checks) else "regressed"
    meta = {k: record.get(k) for k in ("command", "versions", "model_path", "model_sha256")}
    return ReportData(run_dir, "gate" if checks else "battery",
                      record.get("summary") or f"{len(prompts)} prompts, no summary saved",
                      status, secondary, meta, diff, config=record.get("config") or {},
                      gate_checks=checks, prompts=prompts, labels=(labels[0], labels[-1]))


# --------------------------------------------------------------------------------------- figures

def png_data_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _layer_label(layer: int, kinds: dict[int, str]) -> str:
    kind = kinds.get(layer, "")
    short = kind.replace("global attention", "global").replace("sliding attention", "sliding")
    short = short if len(short) <= 22 else short[:21] + "…"
    return f"{layer}  {short}" if short else str(layer)


def heatmap_grid(summary: pd.DataFrame) -> tuple[np.ndarray, list[str], list[int], np.ndarray]:
    """Median rel. L2 as a (row, tap) grid: rows = embeddings, layers, output; taps in
    computation order (`TAP_ORDER`). Also the grid of diverged flags."""
    s = summary
    taps = sorted(set(s.tap), key=lambda t: TAP_ORDER.get(t, 999))
    layers = sorted(int(x) for x in set(s.layer) if x != GLOBAL_LAYER)
    rows = [-2] + layers + [10_000]  # -2: embeddings row, 10_000: output row
    grid = np.full((len(rows), len(taps)), np.nan)
    flags = np.zeros_like(grid, dtype=bool)
    col = {t: i for i, t in enumerate(taps)}
    row_of = {r: i for i, r in enumerate(rows)}
    for r in s.itertuples():
        if int(r.layer) == GLOBAL_LAYER:
            ri = row_of[10_000] if str(r.tap).startswith("result") else row_of[-2]
        else:
            ri = row_of[int(r.layer)]
        grid[ri, col[r.tap]] = r.median
        flags[ri, col[r.tap]] = bool(r.diverged) if "diverged" in s.columns else False
    keep = [i for i in range(len(rows)) if not np.all(np.isnan(grid[i]))]
    return grid[keep], taps, [rows[i] for i in keep], flags[keep]


def heatmap_figure(data: ReportData) -> str | None:
    d = data.diff
    if d is None or d.summary.empty:
        return None
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    grid, taps, rows, flags = heatmap_grid(d.summary)
    positive = grid[np.isfinite(grid) & (grid > 0)]
    if positive.size == 0:
        return None
    # the top of the scale is never below 1 (unrelated tensors), so noise never looks hot
    vmin = max(min(float(positive.min()), 1e-3), 1e-6)
    vmax = max(float(positive.max()), 1.0)
    shown = np.where(np.isfinite(grid), np.maximum(grid, vmin), np.nan)
    fig = Figure(figsize=(13, 0.32 * len(rows) + 2.2))
    ax = fig.add_subplot()
    import matplotlib

    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#eef0f2")
    im = ax.imshow(np.ma.masked_invalid(shown), aspect="auto", cmap=cmap,
                   norm=LogNorm(vmin=vmin, vmax=vmax), interpolation="nearest")
    ax.set_xticks(range(len(taps)), taps, rotation=40, ha="right", fontsize=9)
    labels = ["embeddings" if r == -2 else "output" if r == 10_000 else
              _layer_label(r, data.layer_kinds) for r in rows]
    ax.set_yticks(range(len(rows)), labels, fontsize=9)
    for tick, r in zip(ax.get_yticklabels(), rows):
        if str(data.layer_kinds.get(r, "")).startswith("global attention"):
            tick.set_fontweight("bold")
    ax.set_ylabel("layer (computation runs top to bottom)")
    ax.tick_params(length=0)
    ax.set_xticks(np.arange(-0.5, len(taps)), minor=True)
    ax.set_yticks(np.arange(-0.5, len(rows)), minor=True)
    ax.grid(which="minor", color="white", linewidth=0.8)
    ax.tick_params(which="minor", length=0)
    ys, xs = np.nonzero(flags)
    if len(xs):
        ax.scatter(xs, ys, s=12, c="white", edgecolors="black", linewidths=0.5, zorder=3,
                   label="(layer, tap) above its threshold")
    v = d.verdict
    if v.get("diverged") and v.get("tap") in taps:
        layer = int(v["layer"])
        r = (10_000 if str(v["tap"]).startswith("result") else -2) if layer == GLOBAL_LAYER \
            else layer
        if r in rows:
            ri, ci = rows.index(r), taps.index(v["tap"])
            ax.add_patch(Rectangle((ci - 0.5, ri - 0.5), 1, 1, fill=False, edgecolor="#e00000",
                                   linewidth=3.5, zorder=4))
            right = ci < len(taps) * 0.6
            ax.annotate(f"first divergence: layer {layer}, {v['tap']}",
                        xy=(ci + 0.5 if right else ci - 0.5, ri),
                        xytext=(45 if right else -45, 22 if ri > len(rows) / 2 else -22),
                        textcoords="offset points", ha="left" if right else "right",
                        va="center",
                        color="#e00000", fontsize=11, fontweight="bold", zorder=5,
                        arrowprops=dict(arrowstyle="->", color="#e00000", lw=1.8),
                        bbox=dict(boxstyle="round,pad=0.25", fc="white", ec="#e00000"))
    cb = fig.colorbar(im, ax=ax, fraction=0.025, pad=0.01)
    cb.set_label("median relative L2 error (log)")
    cb.ax.axhline(0.01, color="white", linewidth=1.5)
    cb.ax.text(-0.15, 0.01, "1% ", transform=cb.ax.get_yaxis_transform(), ha="right",
               va="center", fontsize=8)
    if len(xs):
        ax.legend(loc="upper left", bbox_to_anchor=(1.06, -0.02), fontsize=8, frameon=False)
    return png_data_uri(fig)


def _positive(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    pos = values[values > 0]
    floor = float(pos.min()) if pos.size else 1e-12
    return np.maximum(values, floor)


def _mark_positions(ax, data: ReportData, n_positions: int, label: bool) -> None:
    w = data.sliding_window
    if w and 0 < w < n_positions:
        ax.axvline(w, color="#d97706", linestyle="--", linewidth=1.6,
                   label=f"sliding window ({w}): from here sliding layers no longer see "
                         "position 0" if label else None)
    s = data.sentinel_token
    if s is not None and 0 <= s < n_positions:
        ax.axvline(s, color="#7c3aed", linestyle=":", linewidth=2,
                   label=f"sentinel (position {s})" if label else None)


def positions_figure(data: ReportData) -> str | None:
    d = data.diff
    if d is None or d.logits.empty:
        return None
    from matplotlib.figure import Figure

    p = d.positions
    has_taps = p is not None and not p.empty
    n = int(d.logits.position.max()) + 1
    fig = Figure(figsize=(13, 6.2 if has_taps else 3.4))
    axes = fig.subplots(2 if has_taps else 1, 1, sharex=True,
                        gridspec_kw={"height_ratios": [3, 2]} if has_taps else None)
    axes = list(np.atleast_1d(axes))
    if has_taps:
        ax = axes[0]
        styles = {"culprit": ("#dc2626", 1.3), "closest": ("#2563eb", 1.1),
                  "input": ("#6b7280", 1.0)}
        for (role, layer, tap), g in p.groupby(["role", "layer", "tap"], sort=False):
            color, lw = styles.get(role, ("#111", 1.0))
            where = "input to the layer" if role == "input" else (
                "culprit" if role == "culprit" else "closest to its threshold")
            name = f"{tap} @ layer {layer}" if int(layer) != GLOBAL_LAYER else tap
            ax.plot(g.position, _positive(g.rel_l2), color=color, linewidth=lw,
                    label=f"{name} ({where})")
            if role in ("culprit", "closest") and np.isfinite(g.threshold.iloc[0]):
                ax.axhline(g.threshold.iloc[0], color=color, linestyle="--", linewidth=1,
                           alpha=0.7, label=f"{tap} threshold {g.threshold.iloc[0]:.3g}")
        ax.set_yscale("log")
        ax.set_ylabel("relative L2 error (log)")
        _mark_positions(ax, data, n, label=True)
        ax.legend(fontsize=8.5, loc="upper left", framealpha=0.9)
        ax.grid(alpha=0.3)
    ax = axes[-1]
    kl = d.logits.sort_values("position")
    la, lb = d.labels
    ax.plot(kl.position, _positive(kl.kl), color="#0f766e", linewidth=1,
            label=f"KL({la} ‖ {lb}) of the next-token distribution")
    wrong = kl[kl.top1 < 1]
    if len(wrong):
        ax.scatter(wrong.position, _positive(kl.kl)[kl.top1.to_numpy() < 1], s=14,
                   color="#dc2626", zorder=3, label=f"top-1 token differs ({len(wrong)})")
    ax.set_yscale("log")
    ax.set_ylabel("final logits KL (log)")
    ax.set_xlabel("token position")
    ax.set_xlim(-0.5, n - 0.5)
    _mark_positions(ax, data, n, label=not has_taps)
    ax.legend(fontsize=8.5, loc="upper left", framealpha=0.9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return png_data_uri(fig)


def figures(data: ReportData) -> dict[str, str]:
    out = {}
    for name, make in (("heatmap", heatmap_figure), ("positions", positions_figure)):
        uri = make(data)
        if uri:
            out[name] = uri
    return out


# ---------------------------------------------------------------------------------------- render

def reproduce_command(meta: dict) -> str:
    """The command as a user would type it again (`impdiff ...`, quoted for a shell)."""
    argv = meta.get("argv")
    if isinstance(argv, list) and argv:
        return shlex.join(["impdiff", *map(str, argv)])
    command = str(meta.get("command") or "")
    words = command.split(" ")
    if words and Path(words[0]).name == "impdiff":
        return " ".join(["impdiff", *words[1:]])
    if len(words) > 2 and words[1:3] == ["-m", "impdiff"]:
        return " ".join(["impdiff", *words[3:]])
    return command


def recall_matrix(data: ReportData) -> dict | None:
    if not data.results:
        return None
    runtimes = list(data.config.get("runtimes") or sorted({r["runtime"] for r in data.results}))
    lengths = sorted({int(r["length"]) for r in data.results})
    by = {(r["runtime"], int(r["length"])): r for r in data.results}
    b = data.boundary or {}
    rows = []
    for rt in runtimes:
        cells = []
        for n in lengths:
            r = by.get((rt, n))
            cells.append(None if r is None else {
                "passed": bool(r["passed"]), "generated": r.get("generated", ""),
                "answer": r.get("answer", ""), "phase": r.get("phase", "")})
        rows.append({"runtime": rt, "cells": cells})
    phases = [("bisect" if any(by.get((rt, n), {}).get("phase") == "bisect" for rt in runtimes)
               else "sweep") for n in lengths]
    return {"lengths": lengths, "phases": phases, "rows": rows,
            "both": set(runtimes) == {"engine", "llamacpp"},
            "last_pass": b.get("last_pass"), "first_fail": b.get("first_fail")}


def side_by_side(data: ReportData) -> list[dict]:
    """Generated texts of the runtimes at the boundary (else at the longest length)."""
    if not data.results:
        return []
    by = {(r["runtime"], int(r["length"])): r for r in data.results}
    b = data.boundary or {}
    if b.get("first_fail") is not None:
        picks = [(b["first_fail"], "first failing length"),
                 (b.get("last_pass"), "last passing length")]
    else:
        longest = max(int(r["length"]) for r in data.results)
        picks = [(longest, "longest length")]
    out = []
    runtimes = list(data.config.get("runtimes") or sorted({r["runtime"] for r in data.results}))
    for n, label in picks:
        cols = [by[(rt, n)] | {"runtime": rt} for rt in runtimes if (rt, n) in by]
        if cols:
            out.append({"length": n, "label": label, "answer": cols[0].get("answer", ""),
                        "cols": cols})
    return out


def _fmt(x, digits: int = 3) -> str:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return "" if x is None else str(x)
    if math.isnan(x):
        return "–"
    if x == 0:
        return "0"
    return f"{x:.{digits}g}" if 1e-3 <= abs(x) < 1e4 else f"{x:.{max(digits - 1, 1)}e}"


def floor_table(d: DiffData) -> list[dict]:
    """Per tap: noise floor, threshold, and the worst layer's p99 against that threshold."""
    s = d.summary
    if s.empty:
        return []
    rows = []
    for tap, g in sorted(s.groupby("tap"), key=lambda kv: TAP_ORDER.get(kv[0], 999)):
        worst = g.loc[g["p99"].idxmax()]
        thr = float(worst.threshold)
        rows.append({"tap": tap, "floor": _fmt(d.record.get("noise_floor", {}).get(tap,
                                                                                   worst.floor)),
                     "threshold": _fmt(thr), "worst_p99": _fmt(worst.p99),
                     "worst_layer": "–" if int(worst.layer) == GLOBAL_LAYER else int(worst.layer),
                     "headroom": (_fmt(thr / worst.p99, 2) + "×") if worst.p99 > 0 else "–",
                     "above": int(g.n_above.sum())})
    return rows


def divergent_rows(d: DiffData, data: ReportData, top: int = 12) -> list[dict]:
    s = d.summary
    if s.empty or "diverged" not in s.columns:
        return []
    rows = []
    for r in s[s.diverged.astype(bool)].head(top).itertuples():
        rows.append({"layer": "–" if int(r.layer) == GLOBAL_LAYER else int(r.layer),
                     "kind": data.layer_kinds.get(int(r.layer), ""), "tap": r.tap,
                     "median": _fmt(r.median), "p99": _fmt(r.p99), "max": _fmt(r.max),
                     "floor": _fmt(r.floor), "threshold": _fmt(r.threshold),
                     "above": f"{int(r.n_above)}/{int(r.n)}",
                     "by": getattr(r, "by", "") if isinstance(getattr(r, "by", ""), str) else ""})
    return rows


def all_rows(d: DiffData, data: ReportData) -> list[dict]:
    """Every (layer, tap) of the summary, in computation order (the numbers behind the heatmap)."""
    s = d.summary
    if s.empty:
        return []
    return [{"layer": "–" if int(r.layer) == GLOBAL_LAYER else int(r.layer),
             "kind": data.layer_kinds.get(int(r.layer), ""), "tap": r.tap,
             "median": _fmt(r.median), "p99": _fmt(r.p99), "max": _fmt(r.max),
             "threshold": _fmt(r.threshold), "above": f"{int(r.n_above)}/{int(r.n)}",
             "diverged": bool(getattr(r, "diverged", False))} for r in s.itertuples()]


def data_files(run_dir: Path) -> list[dict]:
    out = []
    for p in sorted(run_dir.rglob("*")):
        if p.is_file() and p.name != REPORT_NAME and not p.name.endswith(".png"):
            size = p.stat().st_size
            out.append({"name": str(p.relative_to(run_dir)),
                        "size": f"{size / 1e6:.1f} MB" if size >= 1e6 else
                        f"{size / 1e3:.1f} kB"})
    return out


def facts(data: ReportData) -> list[tuple[str, str]]:
    """The few numbers under the verdict."""
    out = []
    d = data.diff
    if data.prompts:
        agree = sum(p["agree"] for p in data.prompts)
        out.append(("prompts agreeing", f"{agree} of {len(data.prompts)} ({data.labels[0]} "
                    f"vs {data.labels[1]}, greedy)"))
        if data.config.get("inject"):
            out.append(("injected fault", str(data.config["inject"])))
    elif data.kind in ("bracket", "gate"):
        c = data.config
        sweep = c.get("sweep") or []
        if sweep:
            out.append(("sweep", f"{min(sweep)}–{max(sweep)} tokens, {len(sweep)} lengths"))
        b = data.boundary
        out.append(("failure boundary", f"{b['last_pass']} ✓ → {b['first_fail']} ✗ tokens"
                    if b else "none"))
        if c.get("inject"):
            out.append(("injected fault", str(c["inject"])))
    if d is not None:
        v = d.verdict
        if v.get("diverged"):
            out.append(("culprit", f"layer {v.get('layer')}"
                        + (f" ({v['layer_kind']})" if v.get("layer_kind") else "")
                        + f", {v.get('tap')}"))
            count = v.get("n_positions", len(v.get("positions", [])))
            out.append(("divergent positions", f"{count} — {v.get('positions_text', '')}"))
            out.append(("error vs threshold",
                        f"{_fmt(v.get('error'))} vs {_fmt(v.get('threshold'))} (rel. L2)"))
            if v.get("substitution"):
                out.append(("substitution check", v["substitution"]))
        lg = d.record.get("logits", {})
        if lg:
            out.append(("final logits", f"top-1 agreement {lg.get('top1', 0):.1%}, top-5 "
                        f"{lg.get('top5', 0):.1%}, KL mean {_fmt(lg.get('kl_mean'))}, max "
                        f"{_fmt(lg.get('kl_max'))} over {lg.get('n_positions')} positions"))
        inj = d.record.get("inject")
        if inj and data.kind == "diff":
            out.append(("injected fault", str(inj)))
    if data.sliding_window:
        out.append(("sliding window", f"{data.sliding_window} tokens (from the GGUF)"))
    return out


def code_ticks(text: str):
    """Escape `text`, then show its `backticked` words as code (markup added after escaping)."""
    import re

    from markupsafe import Markup, escape

    return Markup(re.sub(r"`([^`<>&]*)`", r"<code>\1</code>", str(escape(text))))


def shown_path(path: Path) -> str:
    """The run dir as a user would type it from here: relative below the cwd, else absolute."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve())) or "."
    except ValueError:
        return str(path.resolve())


def render(data: ReportData, figs: dict[str, str]) -> str:
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(loader=FileSystemLoader(str(TEMPLATE_DIR)),
                      autoescape=select_autoescape(enabled_extensions=("html", "j2"),
                                                   default_for_string=True, default=True),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = _fmt
    env.filters["ticks"] = code_ticks
    d = data.diff
    versions = data.meta.get("versions") or {}
    ctx = {
        "data": data, "d": d, "figs": figs, "csp": CSP, "facts": facts(data),
        "matrix": recall_matrix(data), "texts": side_by_side(data),
        "floor": floor_table(d) if d is not None and not d.diverged else [],
        "divergent": divergent_rows(d, data) if d is not None and d.diverged else [],
        "all_rows": all_rows(d, data) if d is not None else [],
        "taps_kept": d is not None and (d.path / "taps.parquet").is_file(),
        "files": data_files(data.run_dir), "reproduce": reproduce_command(data.meta),
        "rebuild": shlex.join(["impdiff", "report", shown_path(data.run_dir)]),
        "versions": versions, "title_kind": {"diff": "layer diff", "bracket": "recall bracket",
                                             "battery": "prompt battery",
                                             "gate": "gate"}[data.kind],
        "plotted": (d.positions[["role", "layer", "tap"]].drop_duplicates().to_dict("records")
                    if d is not None and not d.positions.empty else []),
        "prompt": data.meta.get("prompt"),
    }
    return env.get_template("report.html.j2").render(**ctx)


def write_report(run_dir: str | Path) -> Path:
    """Load the run dir, draw, render, and write `report.html` into it; returns its path."""
    data = load_run(run_dir)
    for p in data.prompts:  # a battery's page links each prompt's diff page: write those too
        if p["diff"]:
            write_report(data.run_dir / p["diff"])
    # the derived data first: the page lists the data files beside it
    (data.run_dir / CONTEXT_NAME).write_text(json.dumps(data.context, indent=2) + "\n")
    if data.diff is not None and data.diff.positions_derived:
        data.diff.positions.to_csv(data.diff.path / POSITIONS_NAME, index=False)
    page = render(data, figures(data))
    out = data.run_dir / REPORT_NAME
    out.write_text(page, encoding="utf-8")
    return out


def plain_text(page: str) -> str:
    """The page's text without tags (for tests and terminals)."""
    import re

    return html.unescape(re.sub(r"<[^>]+>", " ", page))
