"""`impdiff gate`: a recipe's bracket compared with a committed baseline, for CI.

A regression is a (runtime, length) that passed in the baseline and fails now, or a failure
boundary that moved to a shorter length. Results go out as JUnit XML and a markdown summary.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from .bracket import BracketOutcome
from .errors import UsageError


@dataclass
class GateResult:
    recipe: str
    regressions: list[str] = field(default_factory=list)
    checks: list[tuple[str, bool, str]] = field(default_factory=list)  # (name, ok, message)

    @property
    def passed(self) -> bool:
        return not self.regressions


def baseline_of(outcome: BracketOutcome, recipe: str) -> dict:
    lengths: dict[str, dict[str, bool]] = {}
    for r in outcome.results:
        if r.phase == "sweep":
            lengths.setdefault(str(r.length), {})[r.runtime] = r.passed
    return {"recipe": recipe, "lengths": lengths,
            "boundary": outcome.boundary["first_fail"] if outcome.boundary else None}


def load_baseline(path: Path, key: str = "lengths") -> dict:
    """A committed baseline: a JSON object whose `key` ('lengths' for brackets, 'prompts' for
    batteries) is a mapping."""
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the baseline ({exc.strerror}); create it with "
                         "--update-baseline") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: baseline is not valid JSON ({exc.msg} at line {exc.lineno})") \
            from None
    if not isinstance(data, dict) or not isinstance(data.get(key), dict):
        raise UsageError(f"{path}: baseline must be an object with a '{key}' mapping")
    return data


def compare(outcome: BracketOutcome, baseline: dict, recipe: str) -> GateResult:
    result = GateResult(recipe)
    current = baseline_of(outcome, recipe)
    for length, by_runtime in sorted(baseline["lengths"].items(), key=lambda kv: int(kv[0])):
        for runtime, was in sorted(by_runtime.items()):
            now = current["lengths"].get(length, {}).get(runtime)
            name = f"{runtime} recalls at {length} tokens"
            if now is None:
                result.checks.append((name, True, "not run this time"))
            elif was and not now:
                msg = f"{runtime} passed at {length} tokens in the baseline and fails now"
                result.regressions.append(msg)
                result.checks.append((name, False, msg))
            else:
                result.checks.append((name, True, "passes" if now else "fails, as in the baseline"))
    old, new = baseline.get("boundary"), current["boundary"]
    boundary_ok = not (new is not None and (old is None or new < old))
    msg = (f"engine failure boundary {old} -> {new}" if new != old
           else f"engine failure boundary unchanged ({old})")
    if not boundary_ok:
        result.regressions.append(msg)
    result.checks.append(("failure boundary", boundary_ok, msg))
    return result


def junit_xml(result: GateResult, seconds: float) -> str:
    failures = sum(1 for _, ok, _ in result.checks if not ok)
    cases = []
    for name, ok, msg in result.checks:
        body = "" if ok else f"<failure message={quoteattr(msg)}>{escape(msg)}</failure>"
        cases.append(f'  <testcase classname={quoteattr("impdiff.gate." + result.recipe)} '
                     f'name={quoteattr(name)}>{body}</testcase>')
    return (f'<?xml version="1.0" encoding="utf-8"?>\n<testsuite name={quoteattr(result.recipe)} '
            f'tests="{len(result.checks)}" failures="{failures}" time="{seconds:.1f}">\n'
            + "\n".join(cases) + "\n</testsuite>\n")


def markdown_summary(result: GateResult, outcome: BracketOutcome) -> str:
    status = "✅ pass" if result.passed else "❌ regression"
    runtimes = outcome.config.runtimes
    lines = [f"## impdiff gate: {result.recipe} — {status}", "",
             outcome.summary_line(), "",
             "| tokens | " + " | ".join(runtimes) + " |",
             "|---:|" + "|".join(":-:" for _ in runtimes) + "|"]
    for n in sorted({r.length for r in outcome.results}):
        marks = []
        for name in runtimes:
            p = outcome.passed(name, n)
            marks.append("" if p is None else ("✓" if p else "✗"))
        lines.append(f"| {n} | " + " | ".join(marks) + " |")
    if result.regressions:
        lines += ["", "Regressions:"] + [f"- {r}" for r in result.regressions]
    if outcome.diff is not None:
        lines += ["", f"Layer diff at the boundary: {outcome.diff.verdict.sentence()}"]
    return "\n".join(lines) + "\n"
