"""`impdiff ab`: the same model in several formats / runtimes against one reference.

Each candidate is a `runtime:model` pair (runtime `engine` or `llamacpp`; model a GGUF file, an
HF directory for the engine, or an installed model name), optionally labelled `label=runtime:model`.
For every pair:

* **logits**: final-logit agreement with the reference on one prompt (default 512 tokens of
  filler): top-1 / top-5 agreement and KL(ref || pair), per position, via
  `compare.metrics.logit_metrics`;
* **recall**: the sentinel-recall sweep of `impdiff bracket` (same `build_haystack`, `greedy`,
  `recalled`) at every length;
* **tokens**: whether the pair's own tokenizer gives the reference's ids for the prompts (every
  runtime is fed the reference tokenizer's ids, so that only the weights and the runtime differ).

Then the seeds' question, per length where a pair misses the sentinel:

* the reference misses it too -> **model limit**;
* the same model file passes on another runtime (e.g. llama.cpp on the GGUF the engine fails on)
  -> **engine bug** (runtime-specific: same weights, different answer);
* the same runtime passes with another format -> **format-specific**;
* every format fails on the engine while the reference passes -> **engine bug**.

A pair *agrees* with the reference when its logits are within the thresholds (top-1 >=
`min_top1`, mean KL <= `max_kl`) and it never misses the sentinel where the reference recalls it.
"""

from __future__ import annotations

import gc
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import UsageError

RUNTIMES = ("engine", "llamacpp")


@dataclass(frozen=True)
class ModelSpec:
    label: str
    runtime: str
    path: Path
    text: str

    @property
    def key(self) -> str:
        return f"{self.runtime}:{self.path}"


def parse_spec(text: str, default_label: str | None = None) -> ModelSpec:
    """'engine:PATH', 'llamacpp:PATH' or 'LABEL=runtime:PATH' (default label: the file or
    directory name, with the runtime in front)."""
    from .engine.loader import is_hf_path
    from .real_models import resolve_model

    body = text
    label = default_label
    head, eq, rest = text.partition("=")
    if eq and ":" in rest and "/" not in head and ":" not in head and head:
        label, body = head, rest
    runtime, colon, model = body.partition(":")
    if not colon or runtime not in RUNTIMES or not model:
        raise UsageError(f"'{text}': expected RUNTIME:MODEL with RUNTIME one of "
                         f"{', '.join(RUNTIMES)} (e.g. engine:/models/g-bf16 or "
                         "llamacpp:gemma3-270m), optionally LABEL=RUNTIME:MODEL")
    path = resolve_model(model)
    if runtime == "llamacpp" and (path.is_dir() or is_hf_path(path)):
        raise UsageError(f"'{text}': llama.cpp runs GGUF files, not HF directories")
    if label is None:
        label = f"{runtime}:{path.stem if path.is_file() else path.name}"
    return ModelSpec(label, runtime, path, text)


@dataclass(frozen=True)
class ABConfig:
    pairs: tuple[ModelSpec, ...]
    ref: ModelSpec
    sweep: tuple[int, ...] = (128, 512, 1024, 2048)
    logit_tokens: int = 512
    depth: float = 0.5
    max_tokens: int = 12
    corpus: str = "towns"
    form: str = "code"
    seed: int = 0
    min_top1: float = 0.9
    max_kl: float = 0.1
    device: str = "cpu"
    recall: bool = True
    logits: bool = True

    def validate(self) -> None:
        if not self.pairs:
            raise UsageError("give at least one pair to compare (--a RUNTIME:MODEL)")
        labels = [p.label for p in self.pairs] + [self.ref.label]
        dup = {x for x in labels if labels.count(x) > 1}
        if dup:
            raise UsageError(f"labels must differ: {', '.join(sorted(dup))} used twice")
        if self.logit_tokens < 2:
            raise UsageError("--tokens must be at least 2")
        if not 0 <= self.min_top1 <= 1 or self.max_kl < 0:
            raise UsageError("--min-top1 must be in 0..1 and --max-kl non-negative")
        if self.max_tokens < 1:
            raise UsageError("--max-tokens must be at least 1")


@dataclass
class PairResult:
    spec: ModelSpec
    format: str = ""
    load_summary: str = ""
    warnings: list[str] = field(default_factory=list)
    logits: dict | None = None
    tokens_agree: bool | None = None
    tokens_note: str = ""
    recall: dict[int, dict] = field(default_factory=dict)  # length -> {passed, answer, generated}
    seconds: float = 0.0
    cells: dict[int, str] = field(default_factory=dict)  # length -> classification of a miss
    logit_ok: bool | None = None

    def passed(self, length: int) -> bool | None:
        r = self.recall.get(length)
        return None if r is None else bool(r["passed"])


@dataclass
class ABOutcome:
    config: ABConfig
    ref: PairResult
    pairs: list[PairResult]
    lengths: list[int]
    seconds: float = 0.0

    def pair_agrees(self, p: PairResult) -> bool:
        regress = [n for n, c in p.cells.items() if c != "model limit"]
        return (p.logit_ok is not False) and not regress

    @property
    def all_agree(self) -> bool:
        return all(self.pair_agrees(p) for p in self.pairs)

    def verdict(self, p: PairResult) -> str:
        bits = []
        if p.logit_ok is False:
            bits.append(f"logits differ ({logit_cause(self, p)})")
        by_kind: dict[str, list[int]] = {}
        for n, c in sorted(p.cells.items()):
            by_kind.setdefault(c, []).append(n)
        for kind, lengths in by_kind.items():
            bits.append(f"{kind} at {', '.join(map(str, lengths))}")
        if not bits:
            return "agrees"
        return "; ".join(bits)

    def answer(self) -> str:
        """One line: model limit, format-specific, or engine bug."""
        limit = [n for n in self.lengths if self.ref.passed(n) is False]
        fmt, bug = [], []
        for p in self.pairs:
            for n, c in sorted(p.cells.items()):
                if c == "format-specific":
                    fmt.append(f"{p.spec.label}@{n}")
                elif c.startswith("engine bug") or c.startswith("runtime"):
                    bug.append(f"{p.spec.label}@{n}")
            if p.logit_ok is False:
                cause = logit_cause(self, p)
                (bug if cause.startswith("engine") else fmt).append(f"{p.spec.label} logits")
        parts = []
        if limit:
            parts.append(f"model limit: the reference misses the sentinel at "
                         f"{', '.join(map(str, limit))}")
        elif self.lengths:
            parts.append(f"model limit: none (the reference recalls at every length up to "
                         f"{max(self.lengths)})")
        parts.append("format-specific: " + (", ".join(fmt) if fmt else "none"))
        parts.append("engine bug: " + (", ".join(bug) if bug else "none"))
        return "; ".join(parts)

    def to_json(self) -> dict:
        def pr(p: PairResult) -> dict:
            d = asdict(p)
            d["spec"] = {"label": p.spec.label, "runtime": p.spec.runtime,
                         "path": str(p.spec.path)}
            d["verdict"] = self.verdict(p) if p is not self.ref else "reference"
            return d

        return {"answer": self.answer(), "all_agree": self.all_agree, "lengths": self.lengths,
                "config": {k: v for k, v in asdict(self.config).items()
                           if k not in ("pairs", "ref")},
                "reference": pr(self.ref), "pairs": [pr(p) for p in self.pairs],
                "seconds": self.seconds}


def load_outcome(run_dir: Path) -> ABOutcome:
    """An earlier run's ab.json as an ABOutcome (to print it again)."""
    path = Path(run_dir) / "ab.json"
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path}: cannot read an ab run ({exc})") from None

    def pair(x: dict) -> PairResult:
        s = x["spec"]
        spec = ModelSpec(s["label"], s["runtime"], Path(s["path"]), f"{s['runtime']}:{s['path']}")
        r = PairResult(spec, x.get("format", ""), x.get("load_summary", ""),
                       x.get("warnings", []), x.get("logits"), x.get("tokens_agree"),
                       x.get("tokens_note", ""),
                       {int(n): v for n, v in x.get("recall", {}).items()}, x.get("seconds", 0))
        r.logit_ok = x.get("logit_ok")
        return r

    ref = pair(d["reference"])
    pairs = [pair(x) for x in d["pairs"]]
    known = {f.name for f in ABConfig.__dataclass_fields__.values()}
    cfg = ABConfig(tuple(p.spec for p in pairs), ref.spec,
                   **{k: (tuple(v) if k == "sweep" else v) for k, v in d["config"].items()
                      if k in known})
    outcome = ABOutcome(cfg, ref, pairs, list(d["lengths"]), d.get("seconds", 0.0))
    classify(outcome)
    return outcome


def logit_cause(outcome: ABOutcome, p: PairResult) -> str:
    """Why a pair's logits differ from the reference's.

    Same runtime as the reference (another file): the format. Same file on another runtime:
    that runtime (an engine bug). Otherwise, if another pair on p's runtime agrees with the
    reference, the runtime reproduces the reference where the format allows it: the format.
    """
    ref = outcome.ref.spec
    if p.spec.runtime == ref.runtime:
        return "format-specific: same runtime as the reference"
    if p.spec.path == ref.path:
        return "engine bug: same file as the reference" if p.spec.runtime == "engine" \
            else "runtime-specific: same file as the reference"
    agreeing = [q for q in outcome.pairs if q is not p and q.spec.runtime == p.spec.runtime
                and q.logit_ok]
    if agreeing:
        return f"format-specific: {agreeing[0].spec.label} on the {p.spec.runtime} agrees"
    return f"format or {p.spec.runtime}: no other {p.spec.runtime} pair agrees to tell them apart"


def classify(outcome: ABOutcome) -> None:
    """Fill each pair's `cells`: why it misses the sentinel where it does."""
    for p in outcome.pairs:
        p.cells = {}
        for n in outcome.lengths:
            if p.passed(n) is not False:
                continue
            if outcome.ref.passed(n) is False:
                p.cells[n] = "model limit"
                continue
            others = [q for q in outcome.pairs + [outcome.ref] if q is not p]
            same_file = [q for q in others if q.spec.path == p.spec.path
                         and q.spec.runtime != p.spec.runtime and q.passed(n)]
            same_runtime = [q for q in others if q.spec.runtime == p.spec.runtime
                            and q.spec.path != p.spec.path and q.passed(n)]
            if same_file:
                p.cells[n] = ("engine bug" if p.spec.runtime == "engine"
                              else "runtime-specific (llama.cpp)")
            elif same_runtime:
                p.cells[n] = "format-specific"
            elif p.spec.runtime == "engine":
                p.cells[n] = "engine bug (every engine format misses it)"
            else:
                p.cells[n] = "format-specific"


# --------------------------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------------------------

def _gguf_format(path: Path) -> str:
    import gguf as gguf_pkg

    from .engine.gguf_file import GGUFFile

    try:
        ft = GGUFFile(path).get("general.file_type")
        return "gguf " + gguf_pkg.LlamaFileType(int(ft)).name.replace("MOSTLY_", "")
    except Exception:  # a format label is cosmetic
        return "gguf"


class _Opened:
    """One pair's runtime and tokenizer, opened for the duration of its checks."""

    def __init__(self, spec: ModelSpec, n_ctx: int, device: str, ref_tokenizer=None):
        self.spec = spec
        self.loaded = None
        self.summary = ""
        self.warnings: list[str] = []
        if spec.runtime == "engine":
            from .engine.loader import load_model
            from .runtimes.engine import EngineRuntime

            self.loaded = load_model(spec.path, device)
            stats = getattr(self.loaded, "stats", None)
            if stats is not None:
                self.format = stats.format
                self.summary = stats.summary_line()
                self.warnings = [str(w) for w in stats.warnings if w.level == "warning"]
            else:
                self.format = _gguf_format(spec.path)
            self.runtime = EngineRuntime(spec.path, n_ctx=n_ctx, loaded=self.loaded)
        else:
            from .runtimes.llamacpp import LlamaCppRuntime

            self.format = _gguf_format(spec.path)
            self.runtime = LlamaCppRuntime(spec.path, n_ctx=n_ctx)
        self._tok = ref_tokenizer if (ref_tokenizer is not None and spec.runtime == "llamacpp"
                                      and getattr(ref_tokenizer, "_ab_path", None) == spec.path) \
            else None

    @property
    def tokenizer(self):
        if self._tok is None:
            if self.loaded is not None:
                self._tok = self.loaded.tokenizer
            else:
                from .engine.gguf_file import GGUFFile
                from .engine.tokenizer import Tokenizer

                self._tok = Tokenizer.from_gguf(GGUFFile(self.spec.path))
                self._tok._ab_path = self.spec.path
        return self._tok

    def close(self) -> None:
        self.runtime.close()
        self.runtime = None
        self.loaded = None


def _logit_chunks(rt, ids: list[int], chunk: int = 128):
    rt.reset()
    for lo in range(0, len(ids), chunk):
        yield rt.eval(ids[lo:lo + chunk]).logits


def _metrics_against(ref_logits: np.ndarray, rt, ids: list[int]) -> dict:
    from .compare.metrics import logit_metrics

    rows = {"top1": [], "top5": [], "kl": []}
    pos = 0
    for logits in _logit_chunks(rt, ids):
        n = len(logits)
        m = logit_metrics(logits, ref_logits[pos:pos + n])
        for k in rows:
            rows[k].append(m[k])
        pos += n
    top1, top5, kl = (np.concatenate(rows[k]) for k in ("top1", "top5", "kl"))
    return {"top1": float(top1.mean()), "top5": float(top5.mean()), "kl_mean": float(kl.mean()),
            "kl_max": float(kl.max()), "kl_last": float(kl[-1]), "n_positions": int(len(kl))}


def run_ab(config: ABConfig, out_dir: Path | None = None,
           on_progress: Callable[[str], None] = lambda s: None) -> ABOutcome:
    from .bracket import greedy
    from .haystack import build_haystack, recalled
    from .prompts import filler_ids

    config.validate()
    t_start = time.perf_counter()
    lengths = sorted(set(config.sweep)) if config.recall else []
    n_ctx = max([config.logit_tokens] + [n + config.max_tokens for n in lengths]) + 16

    # the reference: its tokenizer builds every prompt, its logits are what the others match
    on_progress(f"reference {config.ref.label}: loading")
    ref = _Opened(config.ref, n_ctx, config.device)
    ref_result = PairResult(config.ref, ref.format, ref.summary, ref.warnings)
    tok = ref.tokenizer
    if tok.model == "none":  # synthetic models: seeded ids stand in for text, no recall
        if lengths:
            ref.close()
            raise UsageError(f"{config.ref.path}: the reference has no vocabulary to build "
                             "recall prompts with; use --no-recall")
        ids = np.random.default_rng(config.seed).integers(
            0, tok.vocab_size, config.logit_tokens).tolist()
        probe_texts, ref_probe = [], []
    else:
        ids = filler_ids(tok, config.logit_tokens, config.corpus, config.seed)
        probe_texts = [tok.decode(ids, skip_special=True)]
    haystacks = {n: build_haystack(tok, n, config.depth, config.corpus, config.form, config.seed)
                 for n in lengths}
    if lengths:
        probe_texts.append(haystacks[max(lengths)].text)
    ref_probe = [tok.encode(t) for t in probe_texts]
    stops = tok.eog_ids
    ref_logits = None
    t_ref = time.perf_counter()
    try:
        if config.logits:
            on_progress(f"reference {config.ref.label}: logits on {len(ids)} tokens")
            ref_logits = np.concatenate(list(_logit_chunks(ref.runtime, ids)))
        _sweep(ref, ref_result, haystacks, config, tok, stops, greedy, recalled, on_progress)
    finally:
        ref.close()
    ref_result.seconds = round(time.perf_counter() - t_ref, 1)
    vocab = tok.vocab_size

    results = []
    for spec in config.pairs:
        t0 = time.perf_counter()
        on_progress(f"{spec.label}: loading")
        opened = _Opened(spec, n_ctx, config.device, tok if spec.path == config.ref.path
                         else None)
        r = PairResult(spec, opened.format, opened.summary, opened.warnings)
        try:
            from .engine.errors import ModelLoadError

            try:
                ptok = opened.tokenizer
            except ModelLoadError as exc:  # weights without a tokenizer still compare
                ptok, r.tokens_note = None, f"no tokenizer ({exc})"
            if ptok is not None and ptok.vocab_size != vocab:
                raise UsageError(f"{spec.text}: vocabulary of {ptok.vocab_size} tokens, the "
                                 f"reference has {vocab}; not the same model")
            try:
                if ptok is None:
                    raise ValueError(r.tokens_note)
                if not probe_texts:
                    raise ValueError("the reference has no vocabulary")
                probe = [ptok.encode(t) for t in probe_texts]
                r.tokens_agree = probe == ref_probe
                if not r.tokens_agree:
                    a, b = next((x, y) for x, y in zip(probe, ref_probe) if x != y)
                    i = next((k for k, (u, v) in enumerate(zip(a, b)) if u != v),
                             min(len(a), len(b)))
                    r.tokens_note = f"first differs at token {i} ({len(a)} vs {len(b)} tokens)"
            except Exception as exc:  # the pair's own tokenizer is optional to this comparison
                r.tokens_agree, r.tokens_note = None, str(exc)[:80]
            if ref_logits is not None:
                on_progress(f"{spec.label}: logits on {len(ids)} tokens")
                r.logits = _metrics_against(ref_logits, opened.runtime, ids)
                r.logit_ok = (r.logits["top1"] >= config.min_top1
                              and r.logits["kl_mean"] <= config.max_kl)
            _sweep(opened, r, haystacks, config, tok, stops, greedy, recalled, on_progress)
        finally:
            opened.close()
            gc.collect()
        r.seconds = round(time.perf_counter() - t0, 1)
        results.append(r)
        if out_dir is not None:
            _write(out_dir, ABOutcome(config, ref_result, results, lengths))

    outcome = ABOutcome(config, ref_result, results, lengths,
                        round(time.perf_counter() - t_start, 1))
    classify(outcome)
    if out_dir is not None:
        _write(out_dir, outcome)
    return outcome


def _sweep(opened: _Opened, result: PairResult, haystacks, config: ABConfig, tok, stops,
           greedy, recalled, on_progress) -> None:
    for n, h in haystacks.items():
        on_progress(f"{opened.spec.label}: recall @ {n} tokens")
        t0 = time.perf_counter()
        out = greedy(opened.runtime, h.ids, config.max_tokens, stops)
        text = tok.decode(out)
        result.recall[n] = {"passed": recalled(text, h.answer), "answer": h.answer,
                            "generated": text, "n_tokens": h.n_tokens,
                            "seconds": round(time.perf_counter() - t0, 2)}


def _write(out_dir: Path, outcome: ABOutcome) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    classify(outcome)
    (out_dir / "ab.json").write_text(json.dumps(outcome.to_json(), indent=2, default=str))
