"""`impdiff bracket`: sentinel recall across lengths, the failure boundary, and a diff there.

Two criteria decide whether the engine passes at a length. `recall` (the default): does it
recall the sentinel, while llama.cpp does? `agreement`, which needs no model able to recall
(synthetic models, random weights): does the engine still agree with llama.cpp on the same
prompt: the same greedy continuation, and a KL divergence of its next-token distribution at
the prompt's last position from llama.cpp's at most `kl_max`? llama.cpp is the reference
there and always passes.

The workflow of the seeds: sweep the document length with a sentinel in the middle, find the
length where the engine starts failing while llama.cpp still passes, bisect that boundary to a
token resolution, and run the layer diff at the first failing length.

Everything streams to a run directory as it is produced (`results.jsonl`, one line per recall
check), so an interrupted run resumes where it stopped and loses nothing.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from .errors import UsageError
from .haystack import Haystack, build_haystack, recalled

RUNTIME_NAMES = ("engine", "llamacpp")
CRITERIA = ("recall", "agreement")


def parse_sweep(text: str) -> list[int]:
    """'128..2048' (steps of 128), '128..2048:256', or a list '512,1024,1536'."""
    try:
        if ".." in text:
            span, _, step = text.partition(":")
            lo, hi = (int(x) for x in span.split(".."))
            step_n = int(step) if step else 128
            if lo < 1 or hi < lo or step_n < 1:
                raise ValueError
            values = list(range(lo, hi + 1, step_n))
            return values if values[-1] == hi else values + [hi]
        values = sorted({int(x) for x in text.split(",") if x.strip()})
        if not values or values[0] < 1:
            raise ValueError
        return values
    except ValueError:
        raise UsageError(f"--sweep '{text}': expected LO..HI, LO..HI:STEP or a list like "
                         "512,1024,1536 of positive token counts") from None


@dataclass(frozen=True)
class BracketConfig:
    model: str
    sweep: tuple[int, ...]
    runtimes: tuple[str, ...] = RUNTIME_NAMES
    depth: float = 0.5
    max_tokens: int = 12
    inject: str = ""
    corpus: str = "towns"
    form: str = "code"
    seed: int = 0
    resolution: int = 32
    chat: bool = False
    device: str = "cpu"
    diff: bool = True
    criterion: str = "recall"  # or "agreement" (see the module doc)
    kl_max: float = 0.01  # agreement: KL at the last prompt position above this fails
    # what runs each side, RUNTIME:MODEL ("": engine:model and llamacpp:model). The rows keep
    # the role names `engine` (the side under test, a) and `llamacpp` (the reference, b) whatever
    # runs them, so baselines and run directories read the same; reports show `labels()`
    a: str = ""
    b: str = ""

    def specs(self):
        """(under test, reference) as runtime specs."""
        from .runtimes.registry import RuntimeSpec, parse_spec

        a = parse_spec(self.a, "engine", "--a") if self.a else RuntimeSpec("engine", self.model)
        b = parse_spec(self.b, "llamacpp", "--b") if self.b else RuntimeSpec("llamacpp", self.model)
        return a, b

    def labels(self) -> dict[str, str]:
        """Role name -> how reports name the side ('engine' and 'llama.cpp' by default)."""
        from .diff import side_labels

        return dict(zip(RUNTIME_NAMES, side_labels(*self.specs())))

    def validate(self) -> None:
        if self.criterion not in CRITERIA:
            raise UsageError(f"--criterion '{self.criterion}': expected one of "
                             f"{', '.join(CRITERIA)}")
        if self.criterion == "agreement" and set(self.runtimes) != set(RUNTIME_NAMES):
            raise UsageError("--criterion agreement compares the engine with llama.cpp: "
                             "--runtimes must be engine,llamacpp")
        if self.kl_max <= 0:
            raise UsageError("--kl-max must be positive")
        unknown = [r for r in self.runtimes if r not in RUNTIME_NAMES]
        if unknown:
            raise UsageError(f"--runtimes: unknown {', '.join(unknown)} (known: "
                             f"{', '.join(RUNTIME_NAMES)})")
        if self.resolution < 1:
            raise UsageError("--resolution must be at least 1 token")
        if self.max_tokens < 1:
            raise UsageError("--max-tokens must be at least 1")
        under_test = self.specs()[0]
        if self.inject and not under_test.factory.faults:
            raise UsageError(f"--inject applies to engine runtimes; --a {under_test} is "
                             f"{under_test.factory.display}")
        for spec in self.specs():
            if spec.runtime == "dump":  # recorded ids of one prompt: nothing to generate from
                raise UsageError(f"{spec}: a bracket generates at many lengths; a dump replays "
                                 "one recorded prompt (use it with `impdiff diff`)")


def bracket_sides(model: str | None, a: str | None, b: str | None) -> tuple[str, str, str]:
    """(model, a, b) for a BracketConfig from the command line or a recipe. `--model` alone
    leaves a and b empty; with --a / --b both specs are written out, completed as `diff` does
    (`sides.side_specs`), and the model is the reference's."""
    from .real_models import DEFAULT_MODEL
    from .sides import side_specs

    if not (a or b):
        return model or DEFAULT_MODEL, "", ""
    spec_a, spec_b = side_specs(model, a, b)
    return model or spec_b.target, str(spec_a), str(spec_b)


@dataclass
class RecallResult:
    runtime: str
    length: int
    n_tokens: int
    passed: bool
    answer: str
    generated: str
    seconds: float
    phase: str  # "sweep" | "bisect"
    # agreement criterion (engine rows): KL(llama.cpp || engine) at the last prompt position,
    # and the index of the first generated token that differs (None: none did)
    kl_last: float | None = None
    first_divergent: int | None = None


@dataclass
class BracketOutcome:
    config: BracketConfig
    results: list[RecallResult]
    boundary: dict | None  # {"last_pass": L, "first_fail": L, "resolution": r}
    both_fail: list[int]
    diff: object | None = None  # DiffOutcome at the boundary
    seconds: dict[str, float] = field(default_factory=dict)

    def passed(self, runtime: str, length: int) -> bool | None:
        r = find_result(self.results, runtime, length)
        return None if r is None else r.passed

    @property
    def engine_regressed(self) -> bool:
        return self.boundary is not None

    def summary_line(self) -> str:
        if self.config.criterion == "agreement":
            return self._agreement_line()
        a, ref = self.config.labels().values()
        if self.boundary:
            b = self.boundary
            s = (f"{a} fails sentinel recall from {b['first_fail']} tokens while {ref} "
                 f"passes (last {a} pass at {b['last_pass']}, resolution "
                 f"{b['first_fail'] - b['last_pass']} tokens)")
        elif any(r.runtime == "engine" and not r.passed for r in self.results):
            s = f"{a} fails only where {ref} fails too: model limit, not an engine bug"
        else:
            s = "every runtime recalls the sentinel at every length"
        if self.both_fail:
            s += f"; both fail at {', '.join(map(str, self.both_fail))} (model limit)"
        return s


    def _agreement_line(self) -> str:
        a, ref = self.config.labels().values()
        if not self.boundary:
            return (f"{a} agrees with {ref} at every length (the same greedy tokens, KL "
                    f"at the last prompt position at most {self.config.kl_max:g})")
        b = self.boundary
        r = find_result(self.results, "engine", b["first_fail"])
        why = []
        if r is not None and r.kl_last is not None and r.kl_last > self.config.kl_max:
            why.append(f"KL at the last prompt position {r.kl_last:.3g} > {self.config.kl_max:g}")
        if r is not None and r.first_divergent is not None:
            why.append(f"generated token {r.first_divergent} differs")
        return (f"{a} stops agreeing with {ref} from {b['first_fail']} tokens (last "
                f"agreement at {b['last_pass']}, resolution {b['first_fail'] - b['last_pass']} "
                f"tokens)" + (f": {', '.join(why)}" if why else ""))


def find_result(results: list[RecallResult], runtime: str, length: int) -> RecallResult | None:
    for r in results:
        if r.runtime == runtime and r.length == length:
            return r
    return None


class RunDir:
    """The run directory: config, streamed results, and whatever the run writes beside them."""

    def __init__(self, path: Path, config: BracketConfig, meta: dict):
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        run_json = path / "run.json"
        record = {"config": asdict(config), **meta}
        if run_json.exists():
            old = json.loads(run_json.read_text())
            if old.get("config") != json.loads(json.dumps(asdict(config))):
                raise UsageError(f"{path}: holds a run with another configuration; choose "
                                 "another --out or remove it")
        else:
            run_json.write_text(json.dumps(record, indent=2))
        self.results_path = path / "results.jsonl"
        if self.results_path.exists():
            text = self.results_path.read_text()
            if text and not text.endswith("\n"):  # an interrupted write: start a fresh line
                with open(self.results_path, "a") as f:
                    f.write("\n")

    def load(self) -> list[RecallResult]:
        if not self.results_path.exists():
            return []
        out = []
        for line in self.results_path.read_text().splitlines():
            try:
                out.append(RecallResult(**json.loads(line)))
            except (json.JSONDecodeError, TypeError):
                continue  # a line cut by an interruption: that check simply runs again
        return out

    def append(self, result: RecallResult) -> None:
        with open(self.results_path, "a") as f:
            f.write(json.dumps(asdict(result)) + "\n")
            f.flush()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def versions() -> dict[str, str]:
    import importlib.metadata as md

    import torch

    from . import __version__

    out = {"impdiff": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
           "platform": platform.platform(),
           "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
    for dist in ("llama-cpp-python", "gguf"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def greedy(runtime, ids: Sequence[int], max_tokens: int, stop_ids: Iterable[int]) -> list[int]:
    """Greedy continuation through the runtime interface (the same for every runtime)."""
    return continuation(runtime, ids, max_tokens, stop_ids)[1]


def continuation(runtime, ids: Sequence[int], max_tokens: int, stop_ids: Iterable[int]
                 ) -> tuple["np.ndarray", list[int]]:
    """Like `greedy`, also returning the logits at the prompt's last position."""
    runtime.reset()
    first = logits = runtime.eval(ids, last_only=True).logits[-1]
    out: list[int] = []
    stops = set(stop_ids)
    for _ in range(max_tokens):
        token = int(logits.argmax())
        if token in stops:
            break
        out.append(token)
        logits = runtime.eval([token], last_only=True).logits[-1]
    return first, out


def kl_divergence(ref_logits, logits) -> float:
    """KL(softmax(ref) || softmax(logits)) of one position."""
    from .compare.metrics import log_softmax

    lr, la = log_softmax(ref_logits[None])[0], log_softmax(logits[None])[0]
    return max(float((np.exp(lr) * (lr - la)).sum()), 0.0)


CheckFn = Callable[[str, int, str], RecallResult]  # (runtime, length, phase) -> result


def find_boundary(sweep: Sequence[int], check: CheckFn, resolution: int) -> dict | None:
    """First sweep length where the engine fails and llama.cpp passes, bisected."""
    last_pass = None
    for length in sweep:
        eng, ref = check("engine", length, "sweep"), check("llamacpp", length, "sweep")
        if eng.passed:
            last_pass = length
        elif ref.passed:
            return bisect(last_pass if last_pass is not None else 0, length, check, resolution)
    return None


def bisect(lo: int, hi: int, check: CheckFn, resolution: int) -> dict:
    """Narrow [lo passes, hi fails] to the resolution; llama.cpp must pass where we probe."""
    while hi - lo > resolution:
        mid = (lo + hi) // 2
        if check("engine", mid, "bisect").passed:
            lo = mid
        elif check("llamacpp", mid, "bisect").passed:
            hi = mid
        else:  # both fail here: the engine's failure above is not attributable; stop
            break
    return {"last_pass": lo, "first_fail": hi, "resolution": resolution}


class Bracket:
    def __init__(self, config: BracketConfig, run: RunDir,
                 on_progress: Callable[[str], None] = lambda s: None):
        from .engine.faults import parse_faults
        from .engine.loader import load_model
        from .runtimes.registry import describe, resolve_target
        from .sides import tokenizer_side

        config.validate()
        self.config, self.run = config, run
        self.specs = dict(zip(RUNTIME_NAMES, config.specs()))  # role -> what runs it
        under_test = self.specs["engine"]
        self.faults = parse_faults(config.inject)
        # the engine side loads once: its runtime and the diff at the boundary share it
        self.loaded = (load_model(resolve_target(under_test), config.device, self.faults)
                       if under_test.runtime == "engine" else None)
        infos = [describe(spec) for spec in self.specs.values()]
        side = tokenizer_side(infos)
        if self.loaded is None and side is None:
            raise UsageError(f"no tokenizer for {under_test} or {self.specs['llamacpp']}: a "
                             "bracket needs one side with a tokenizer")
        self.tokenizer = self.loaded.tokenizer if self.loaded is not None else side.tokenizer
        self.n_vocab = next((i.n_vocab for i in infos if i.n_vocab), None)
        self.results = run.load()
        self.on_progress = on_progress
        self._runtimes: dict[str, object] = {}
        self._haystacks: dict[int, Haystack] = {}
        self.n_ctx = max(config.sweep) + config.max_tokens + 16

    def runtime(self, name: str):
        """The runtime of a role ('engine': under test, 'llamacpp': the reference), opened once."""
        from .runtimes.registry import open_runtime

        if name not in self._runtimes:
            taps, extra = None, {}
            if name == "engine":
                extra = {"faults": self.faults or None, "loaded": self.loaded}
            elif self._follow_router():  # the engine follows llama.cpp's expert choice
                from .compare.experts import ROUTER_TAP
                from .taps import TapSelection

                taps = TapSelection(frozenset({ROUTER_TAP}))
            self._runtimes[name] = open_runtime(self.specs[name], taps=taps, n_ctx=self.n_ctx,
                                                device=self.config.device, **extra)
        return self._runtimes[name]

    def close(self) -> None:
        for rt in self._runtimes.values():
            rt.close()

    def haystack(self, length: int) -> Haystack:
        if length not in self._haystacks:
            c = self.config
            self._haystacks[length] = build_haystack(self.tokenizer, length, c.depth, c.corpus,
                                                     c.form, c.seed, c.chat)
        return self._haystacks[length]

    def prompt(self, length: int) -> list[int]:
        """The agreement criterion's prompt: seeded ids for a model without a vocabulary,
        filler text otherwise; the shorter prompts are prefixes of the longer ones."""
        from .prompts import filler_ids

        c = self.config
        if self.tokenizer.model == "none":
            return np.random.default_rng(c.seed).integers(0, self.n_vocab, length).tolist()
        return filler_ids(self.tokenizer, length, c.corpus, c.seed)

    def check_agreement(self, runtime: str, length: int, phase: str) -> RecallResult:
        """Both runtimes on the same prompt; the engine row says whether it agrees.

        The continuation is llama.cpp's greedy one, fed to both (teacher forcing): the first
        divergent token is the first step where the engine's argmax differs from llama.cpp's.
        On MoE models the engine routes tokens to the experts llama.cpp picked (as `diff` does,
        impdiff.compare.experts): a near-tie decided the other way by rounding noise would
        otherwise swing the KL by orders of magnitude from one length to the next."""
        from .compare.experts import follow_router

        done = find_result(self.results, runtime, length)
        if done is not None:
            return done
        ids = self.prompt(length)
        follow = self._follow_router()
        ref, eng = self.runtime("llamacpp"), self.runtime("engine")
        self.on_progress(f"engine and llama.cpp @ {length} tokens")
        spent = {"llamacpp": 0.0, "engine": 0.0}

        def timed(name, rt, tokens, **kw):
            t0 = time.perf_counter()
            result = rt.eval(tokens, **kw)
            spent[name] += time.perf_counter() - t0
            return result

        ref.reset()
        eng.reset()
        # all logits when following: some architectures' last layer keeps only output rows
        out = timed("llamacpp", ref, ids, last_only=not follow)
        ref_next = out.logits[-1]
        eng_next = timed("engine", eng, ids, last_only=True, **(
            {"patches": follow_router(out.taps)} if follow else {})).logits[-1]
        kl = kl_divergence(ref_next, eng_next)
        stops = set(self.tokenizer.eog_ids)
        ref_tokens, eng_tokens, first = [], [], None
        for i in range(self.config.max_tokens):
            token, mine = int(ref_next.argmax()), int(eng_next.argmax())
            eng_tokens.append(mine)
            if first is None and mine != token:
                first = i
            if token in stops:
                break
            ref_tokens.append(token)
            if i == self.config.max_tokens - 1:
                break
            out = timed("llamacpp", ref, [token], last_only=True)
            ref_next = out.logits[-1]
            eng_next = timed("engine", eng, [token], last_only=True, **(
                {"patches": follow_router(out.taps)} if follow else {})).logits[-1]
        ref_s, eng_s = spent["llamacpp"], spent["engine"]
        ref_text = self.tokenizer.decode(ref_tokens)
        rows = [RecallResult("llamacpp", length, len(ids), True, "", ref_text, round(ref_s, 3),
                             phase, 0.0, None),
                RecallResult("engine", length, len(ids),
                             kl <= self.config.kl_max and first is None, ref_text,
                             self.tokenizer.decode(eng_tokens), round(eng_s, 3), phase, kl,
                             first)]
        for r in rows:
            if find_result(self.results, r.runtime, length) is None:
                self.results.append(r)
                self.run.append(r)
        return find_result(self.results, runtime, length)

    def _follow_router(self) -> bool:
        """Route the engine's tokens to llama.cpp's experts: only the engine takes patches,
        and only llama.cpp's router tap is read here."""
        return (self.config.criterion == "agreement" and self.loaded is not None
                and bool(self.loaded.cfg.moe_layers) and self.specs["llamacpp"].runtime ==
                "llamacpp")

    def check(self, runtime: str, length: int, phase: str) -> RecallResult:
        if self.config.criterion == "agreement":
            return self.check_agreement(runtime, length, phase)
        done = find_result(self.results, runtime, length)
        if done is not None:
            return done
        self.on_progress(f"{runtime} @ {length} tokens")
        h = self.haystack(length)
        t0 = time.perf_counter()
        out = greedy(self.runtime(runtime), h.ids, self.config.max_tokens,
                     self.tokenizer.eog_ids)
        text = self.tokenizer.decode(out)
        result = RecallResult(runtime, length, h.n_tokens, recalled(text, h.answer), h.answer,
                              text, round(time.perf_counter() - t0, 3), phase)
        self.results.append(result)
        self.run.append(result)
        return result

    def sweep(self) -> None:
        for length in self.config.sweep:
            for name in self.config.runtimes:
                self.check(name, length, "sweep")

    def find_boundary(self) -> dict | None:
        if set(self.config.runtimes) != set(RUNTIME_NAMES):
            return None
        return find_boundary(self.config.sweep, self.check, self.config.resolution)

    def both_fail(self) -> list[int]:
        lengths = sorted({r.length for r in self.results})
        found = lambda name, n: find_result(self.results, name, n)  # noqa: E731
        return [n for n in lengths if all(found(name, n) is not None and not found(name, n).passed
                                          for name in self.config.runtimes)]

    def diff_at(self, length: int, on_chunk=None):
        from .diff import run_diff, write_tables

        for rt in list(self._runtimes):  # free the sweep's llama.cpp before a tap run
            self._runtimes.pop(rt).close()
        if self.config.criterion == "agreement":
            ids, meta = self.prompt(length), {}
        else:
            h = self.haystack(length)
            ids, meta = h.ids, {"sentinel_token": h.sentinel_token}
        out_dir = self.run.path / "diff"
        out_dir.mkdir(exist_ok=True)
        outcome = run_diff(None, ids, a=self.specs["engine"], b=self.specs["llamacpp"],
                           faults=self.faults, loaded=self.loaded, out_dir=out_dir,
                           device=self.config.device, on_chunk=on_chunk,
                           on_stage=lambda s: self.on_progress(f"diff @ {length}: {s}"))
        write_tables(outcome, out_dir, {"length": length, **meta, "inject": str(self.faults)})
        return outcome


def run_bracket(config: BracketConfig, model_path: Path, out_dir: Path, command: str,
                on_progress: Callable[[str], None] = lambda s: None,
                on_chunk=None) -> BracketOutcome:
    meta = {"command": command, "versions": versions(), "model_path": str(model_path),
            "model_sha256": file_sha256(model_path) if Path(model_path).is_file() else None}
    run = RunDir(out_dir, config, meta)
    t0 = time.perf_counter()
    b = Bracket(config, run, on_progress)
    try:
        b.sweep()
        boundary = b.find_boundary()
        outcome = BracketOutcome(config, b.results, boundary, b.both_fail())
        if boundary and config.diff:
            outcome.diff = b.diff_at(boundary["first_fail"], on_chunk)
    finally:
        b.close()
    outcome.seconds = {
        "total": round(time.perf_counter() - t0, 1),
        **{f"recall_{name}": round(sum(r.seconds for r in b.results if r.runtime == name), 1)
           for name in config.runtimes},
    }
    (out_dir / "outcome.json").write_text(json.dumps({
        "summary": outcome.summary_line(), "boundary": boundary, "both_fail": outcome.both_fail,
        "seconds": outcome.seconds,
        "diff_verdict": outcome.diff.verdict.sentence() if outcome.diff else None,
    }, indent=2))
    return outcome
