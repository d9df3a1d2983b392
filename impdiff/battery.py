"""`impdiff battery`: about twenty prompts, greedy on two runtimes, and a layer diff wherever
they part.

The seeds validate an engine on a 20-prompt battery (short facts, arithmetic, code,
multilingual, JSON output, instruction following, long-context recall at 2048 tokens). This is
that battery, built in: each prompt runs greedily on the runtime under test (`a`) and on the
reference (`b`, llama.cpp by default), in the model's chat template for instruct models. Per
prompt it reports whether the two token streams agree, the first divergent token, and, where a
prompt has one, whether each runtime's answer is right. For every disagreement the layer diff
runs automatically on the prompt plus the generated tokens up to the divergence, so the last
position evaluated is the one whose next token the runtimes chose differently.

Exit codes: 0 every prompt agrees, 1 a prompt disagrees (or a diff finds a divergence), 2 usage.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

from .errors import UsageError


@dataclass(frozen=True)
class BatteryPrompt:
    id: str
    kind: str  # fact | arithmetic | code | multilingual | json | instruction | long-context
    text: str = ""  # the user message (chat); plain mode wraps it as "Question: ...\nAnswer:"
    expect: tuple[str, ...] = ()  # accepted answers: any one of them in the output (no case)
    max_tokens: int = 24
    plain: str = ""  # the plain-mode prompt when the question frame does not fit (completions)
    json: bool = False  # the answer must hold a JSON value
    haystack: int = 0  # long-context recall: a sentinel document of about this many tokens


P = BatteryPrompt
BATTERY: tuple[BatteryPrompt, ...] = (
    P("fact-capital", "fact", "What is the capital of France?", ("paris",)),
    P("fact-planet", "fact", "Which planet is known as the Red Planet?", ("mars",)),
    P("fact-author", "fact", "Who wrote the play Romeo and Juliet?", ("shakespeare",)),
    P("fact-water", "fact", "What is the chemical formula of water?", ("h2o", "h₂o")),
    P("arith-add", "arithmetic", "What is 17 + 25?", ("42",)),
    P("arith-mul", "arithmetic", "What is 9 times 8?", ("72",)),
    P("arith-word", "arithmetic", "Tom has 3 apples and buys 4 more. How many apples does he "
      "have now?", ("7", "seven")),
    P("code-square", "code", "Write a Python function that returns the square of a number.",
      ("def ",), 48, plain="# Python: a function that returns the square of a number\ndef"),
    P("code-fib", "code", "Complete this Python function:\ndef fibonacci(n):", ("return",), 48,
      plain="def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"),
    P("code-sql", "code", "Write an SQL query that selects all rows from a table named users.",
      ("select",), 32, plain="-- SQL: select all rows from the table users\n"),
    P("multi-fr", "multilingual", "Translate into French: Good morning, my friend.",
      ("bonjour",)),
    P("multi-es", "multilingual", "¿Cuál es la capital de España?", ("madrid",)),
    P("multi-de", "multilingual", "Was ist die Hauptstadt von Deutschland?", ("berlin",)),
    P("multi-ja", "multilingual", "日本の首都はどこですか？", ("東京", "tokyo")),
    P("json-person", "json", 'Return only a JSON object with the keys "name" and "age" for '
      "Alice, who is 30 years old.", ("alice",), 40, json=True),
    P("json-primes", "json", "Output a JSON list of the first three prime numbers.",
      ("[2, 3, 5]", "[2,3,5]"), 24, json=True),
    P("instr-yesno", "instruction", "Answer with only yes or no: is the sky blue on a clear "
      "day?", ("yes",), 8),
    P("instr-repeat", "instruction", "Repeat the word banana three times.", ("banana",)),
    P("instr-colours", "instruction", "List three colours, one per line.",
      ("red", "blue", "green", "yellow")),
    P("long-recall", "long-context", expect=(), max_tokens=12, haystack=2048),
)


@dataclass(frozen=True)
class BatteryConfig:
    a: str  # runtime under test, a spec (`engine:M`)
    b: str  # reference runtime
    prompts: tuple[str, ...] = ()  # prompt ids to run; empty: all
    max_tokens: int = 0  # 0: each prompt's own
    inject: str = ""  # engine faults for `a`
    chat: bool | None = None  # None: the model's chat template for instruct models
    long_context: int = 2048  # tokens of the long-context recall prompt
    device: str = "cpu"
    diff: bool = True  # layer diff at each disagreement
    diff_taps: str | None = None  # --taps for those diffs (default all)
    seed: int = 0


@dataclass
class PromptResult:
    id: str
    kind: str
    n_prompt: int
    tokens_a: list[int]
    tokens_b: list[int]
    text_a: str
    text_b: str
    correct_a: bool | None
    correct_b: bool | None
    first_divergence: int | None  # generated-token index where a and b first differ
    seconds: dict[str, float] = field(default_factory=dict)
    verdict: str = ""  # the auto-diff's verdict sentence at the divergence
    verdict_layer: int | None = None
    verdict_tap: str | None = None
    diff_diverged: bool | None = None
    diff_dir: str = ""
    # at the divergent position: a's logit gap between its own token and the reference's
    # (small: a near tie that rounding can flip), and KL(reference || a)
    logit_gap: float | None = None
    kl: float | None = None

    @property
    def agree(self) -> bool:
        return self.first_divergence is None

    @property
    def agreement(self) -> float:
        """Share of the reference's generated tokens that a reproduced before diverging."""
        n = max(len(self.tokens_a), len(self.tokens_b), 1)
        k = n if self.first_divergence is None else self.first_divergence
        return k / n


@dataclass
class BatteryOutcome:
    config: BatteryConfig
    labels: tuple[str, str]
    results: list[PromptResult]
    chat: bool
    seconds: float = 0.0

    @property
    def disagreements(self) -> list[PromptResult]:
        return [r for r in self.results if not r.agree]

    @property
    def failed(self) -> bool:
        return bool(self.disagreements) or any(r.diff_diverged for r in self.results)

    def summary_line(self) -> str:
        n, bad = len(self.results), self.disagreements
        a, b = self.labels
        if not bad:
            s = f"{a} and {b} agree on all {n} prompts (greedy, token for token)"
        else:
            s = (f"{a} and {b} disagree on {len(bad)} of {n} prompts: "
                 + ", ".join(f"{r.id} (token {r.first_divergence})" for r in bad))
        diverged = [r for r in self.results if r.diff_diverged]
        if diverged:
            layers = sorted({(r.verdict_layer, r.verdict_tap) for r in diverged},
                            key=lambda x: (x[0] if x[0] is not None else -9, x[1] or ""))
            s += "; layer diffs point at " + ", ".join(
                f"layer {l} `{t}`" if l is not None and l >= 0 else f"`{t}`" for l, t in layers)
        return s


def first_divergence(a: Sequence[int], b: Sequence[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def check_answer(p: BatteryPrompt, text: str, expect: Sequence[str]) -> bool | None:
    if not expect and not p.json:
        return None
    norm = re.sub(r"\s+", " ", text.lower())
    ok = not expect or any(e.lower() in norm for e in expect)
    if p.json:
        ok = ok and _holds_json(text)
    return ok


def _holds_json(text: str) -> bool:
    decoder = json.JSONDecoder()
    for i, ch in enumerate(text):
        if ch in "[{":
            try:
                decoder.raw_decode(text[i:])
                return True
            except json.JSONDecodeError:
                continue
    return False


def select_prompts(ids: Sequence[str]) -> list[BatteryPrompt]:
    if not ids:
        return list(BATTERY)
    by_id = {p.id: p for p in BATTERY}
    unknown = [i for i in ids if i not in by_id]
    if unknown:
        raise UsageError(f"--prompts: unknown prompt(s) {', '.join(unknown)} (known: "
                         f"{', '.join(by_id)})")
    return [by_id[i] for i in ids]


def encode_battery_prompt(p: BatteryPrompt, tokenizer, chat: bool, long_context: int,
                          seed: int = 0) -> tuple[list[int], tuple[str, ...]]:
    """(token ids, accepted answers) of one prompt."""
    from .engine.chat import encode_prompt
    from .haystack import build_haystack

    if p.haystack:
        h = build_haystack(tokenizer, long_context or p.haystack, 0.5, "towns", "code", seed,
                           chat)
        return list(h.ids), (h.answer,)
    if chat:
        return encode_prompt(tokenizer, p.text, True), p.expect
    text = p.plain or f"Question: {p.text}\nAnswer:"
    return encode_prompt(tokenizer, text, False), p.expect


def run_battery(config: BatteryConfig, out_dir: Path, *,
                on_progress: Callable[[str], None] = lambda s: None,
                on_chunk=None, command: str = "") -> BatteryOutcome:
    from .bracket import file_sha256, greedy, versions
    from .diff import run_diff, side_labels, write_tables
    from .engine.faults import parse_faults
    from .runtimes.registry import describe, open_runtime, parse_spec
    from .sides import tokenizer_side
    from .taps import TapSelection

    spec_a, spec_b = parse_spec(config.a, "engine", "a"), parse_spec(config.b, "llamacpp", "b")
    faults = parse_faults(config.inject)
    if faults and not spec_a.factory.faults:
        raise UsageError(f"--inject applies to engine runtimes; {spec_a} is "
                         f"{spec_a.factory.display}")
    try:
        selection = TapSelection.parse(config.diff_taps)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    prompts = select_prompts(config.prompts)
    infos = (describe(spec_a), describe(spec_b))
    side = tokenizer_side(infos)
    if side is None or getattr(side.tokenizer, "model", "") == "none":
        raise UsageError(f"the battery needs a tokenizer (text prompts); neither {spec_a} nor "
                         f"{spec_b} has one")
    tok = side.tokenizer
    chat = config.chat if config.chat is not None else any(i.instruct for i in infos)
    encoded = []
    for p in prompts:
        ids, expect = encode_battery_prompt(p, tok, chat, config.long_context, config.seed)
        encoded.append((p, ids, expect, config.max_tokens or p.max_tokens))
    n_ctx = max(len(ids) + n for _, ids, _, n in encoded) + 16
    labels = side_labels(spec_a, spec_b)
    out_dir.mkdir(parents=True, exist_ok=True)
    stops = set(tok.eog_ids)

    t0 = time.perf_counter()
    loaded = None
    on_progress(f"loading {spec_a}")
    rt_a = open_runtime(spec_a, n_ctx=n_ctx, device=config.device, faults=faults or None)
    loaded = getattr(rt_a, "loaded", None)
    results: list[PromptResult] = []
    try:
        on_progress(f"loading {spec_b}")
        with open_runtime(spec_b, n_ctx=n_ctx, device=config.device) as rt_b:
            for p, ids, expect, max_tokens in encoded:
                on_progress(f"{p.id}: {labels[0]}")
                t1 = time.perf_counter()
                gen_a = greedy(rt_a, ids, max_tokens, stops)
                t2 = time.perf_counter()
                on_progress(f"{p.id}: {labels[1]}")
                gen_b = greedy(rt_b, ids, max_tokens, stops)
                t3 = time.perf_counter()
                text_a, text_b = tok.decode(gen_a), tok.decode(gen_b)
                r = PromptResult(p.id, p.kind, len(ids), gen_a, gen_b, text_a, text_b,
                                 check_answer(p, text_a, expect), check_answer(p, text_b, expect),
                                 first_divergence(gen_a, gen_b),
                                 {"a": round(t2 - t1, 2), "b": round(t3 - t2, 2)})
                results.append(r)
                with open(out_dir / "results.jsonl", "a") as f:
                    f.write(json.dumps(_record(r)) + "\n")
        if config.diff:
            for (p, ids, _, _), r in zip(encoded, results):
                if r.agree:
                    continue
                k = r.first_divergence
                diff_ids = list(ids) + list(r.tokens_b[:k])
                d = out_dir / f"diff-{p.id}"
                d.mkdir(exist_ok=True)
                on_progress(f"{p.id}: layer diff on {len(diff_ids)} tokens")
                outcome = run_diff(None, diff_ids, a=spec_a, b=spec_b, faults=faults,
                                   selection=selection, device=config.device, loaded=loaded,
                                   out_dir=d, on_chunk=on_chunk,
                                   on_stage=lambda s, pid=p.id: on_progress(f"{pid}: {s}"))
                write_tables(outcome, d, {"prompt": p.id, "n_tokens": len(diff_ids),
                                          "divergent_token": k, "inject": str(faults),
                                          "a": str(spec_a), "b": str(spec_b)})
                v = outcome.verdict
                last = outcome.lockstep.logits.iloc[-1]
                r.logit_gap, r.kl = round(float(last.top1_gap), 4), float(last.kl)
                r.verdict = v.sentence(*outcome.labels)
                if not v.diverged and float(last.top1) < 1.0:
                    r.verdict += (f"; at the divergent token {outcome.labels[0]}'s logit gap "
                                  f"between its choice and the reference's is {r.logit_gap:.3g}"
                                  f" (KL {r.kl:.2g}): a near tie")
                elif not v.diverged:
                    r.verdict += ("; evaluated in one prefill both pick the same token there "
                                  f"(KL {r.kl:.2g}): the token-by-token decode's rounding "
                                  "flipped a near tie")
                r.diff_diverged = v.diverged
                r.verdict_layer, r.verdict_tap = v.layer, v.tap
                r.diff_dir = str(d)
    finally:
        rt_a.close()
    outcome = BatteryOutcome(config, labels, results, chat, round(time.perf_counter() - t0, 1))
    model = infos[0].path  # what the report names and reads layer kinds from
    (out_dir / "battery.json").write_text(json.dumps({
        "config": asdict(config), "labels": list(labels), "chat": chat,
        "summary": outcome.summary_line(), "seconds": outcome.seconds,
        "command": command, "versions": versions(),
        "model_path": str(model) if model else None,
        "model_sha256": file_sha256(model) if model and model.is_file() else None,
        "results": [_record(r) for r in results]}, indent=2))
    return outcome


def _record(r: PromptResult) -> dict:
    return asdict(r) | {"agree": r.agree, "agreement": round(r.agreement, 4)}


# -- gate: a battery recipe against its baseline ------------------------------------------------

def battery_config_from_recipe(data: dict) -> BatteryConfig:
    from .sides import side_specs

    a, b = side_specs(data.get("model"), data.get("a"), data.get("b"))
    return BatteryConfig(a=str(a), b=str(b), prompts=tuple(data.get("prompts") or ()),
                         max_tokens=data.get("max_tokens", 0), inject=data.get("inject") or "",
                         chat=data.get("chat"), long_context=data.get("long_context", 2048),
                         device=data.get("device", "cpu"), diff=data.get("diff", True))


def baseline_of(outcome: BatteryOutcome, recipe: str) -> dict:
    return {"recipe": recipe, "kind": "battery",
            "prompts": {r.id: {"agree": r.agree, "correct_a": r.correct_a}
                        for r in outcome.results}}


def compare(outcome: BatteryOutcome, baseline: dict, recipe: str):
    """A regression: a prompt that agreed in the baseline and disagrees now, an expected answer
    the runtime under test got right in the baseline and misses now, or a diff divergence."""
    from .gate import GateResult

    result = GateResult(recipe)
    base = baseline.get("prompts", {})
    for r in outcome.results:
        was = base.get(r.id)
        name = f"{r.id}: {outcome.labels[0]} agrees with {outcome.labels[1]}"
        if was is None:
            result.checks.append((name, True, "not in the baseline"))
        elif was.get("agree") and not r.agree:
            msg = (f"{r.id}: agreed in the baseline, now diverges at generated token "
                   f"{r.first_divergence}" + (f" ({r.verdict})" if r.verdict else ""))
            result.regressions.append(msg)
            result.checks.append((name, False, msg))
        else:
            result.checks.append((name, True, "agrees" if r.agree else
                                  "disagrees, as in the baseline"))
        if was is not None and was.get("correct_a") and r.correct_a is False:
            msg = f"{r.id}: {outcome.labels[0]} answered right in the baseline, wrong now"
            result.regressions.append(msg)
            result.checks.append((f"{r.id}: expected answer", False, msg))
    return result


def markdown_summary(result, outcome: BatteryOutcome) -> str:
    status = "✅ pass" if result.passed else "❌ regression"
    a, b = outcome.labels
    lines = [f"## impdiff gate: {result.recipe} (battery) — {status}", "",
             outcome.summary_line(), "",
             f"| prompt | kind | agree | first divergent token | {a} right | {b} right |",
             "|---|---|:-:|--:|:-:|:-:|"]
    mark = {True: "✓", False: "✗", None: ""}
    for r in outcome.results:
        lines.append(f"| {r.id} | {r.kind} | {mark[r.agree]} | "
                     f"{'' if r.agree else r.first_divergence} | {mark[r.correct_a]} | "
                     f"{mark[r.correct_b]} |")
    if result.regressions:
        lines += ["", "Regressions:"] + [f"- {x}" for x in result.regressions]
    verdicts = [r for r in outcome.results if r.verdict]
    if verdicts:
        lines += ["", "Layer diffs at the divergences:"] + [f"- {r.id}: {r.verdict}"
                                                            for r in verdicts]
    return "\n".join(lines) + "\n"


def with_overrides(config: BatteryConfig, **kw) -> BatteryConfig:
    return replace(config, **{k: v for k, v in kw.items() if v is not None})
