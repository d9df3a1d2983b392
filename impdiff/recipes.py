"""Recipes: YAML experiments (safe-loaded) validated into a `BracketConfig` and a baseline."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .bracket import CRITERIA, RUNTIME_NAMES, BracketConfig, bracket_sides, parse_sweep
from .errors import UsageError


@dataclass(frozen=True)
class Recipe:
    name: str
    path: Path
    config: BracketConfig
    baseline: Path | None
    description: str = ""
    kind: str = "bracket"  # "bracket" (config: BracketConfig) | "battery" (BatteryConfig)


# key: (python type(s), check or None, what the user should write)
_SCHEMA: dict[str, tuple[tuple[type, ...], Any, str]] = {
    "name": ((str,), None, "a string"),
    "description": ((str,), None, "a string"),
    "kind": ((str,), lambda v: v in ("bracket", "battery"), "'bracket' or 'battery'"),
    # the two runtime specs (either kind), as `--a` / `--b`
    "a": ((str,), None, "a runtime spec such as engine:MODEL"),
    "b": ((str,), None, "a runtime spec such as llamacpp:MODEL"),
    # battery recipes (kind: battery): a subset of prompt ids, the long-context prompt's length
    "prompts": ((list,), lambda v: all(isinstance(x, str) for x in v), "a list of prompt ids"),
    "long_context": ((int,), lambda v: v >= 64, "an integer of at least 64"),
    "model": ((str,), None, "a model name or GGUF path"),
    "sweep": ((str, list), None, "LO..HI, LO..HI:STEP or a list of token counts"),
    "runtimes": ((list,), lambda v: all(x in RUNTIME_NAMES for x in v),
                 f"a list of {', '.join(RUNTIME_NAMES)}"),
    "depth": ((int, float), lambda v: 0 <= v <= 1, "a number from 0 to 1"),
    "max_tokens": ((int,), lambda v: v >= 1, "a positive integer"),
    "inject": ((str, type(None)), None, "a fault name, or null"),
    "corpus": ((str,), None, "a built-in corpus name"),
    "sentinel": ((str,), None, "code, passphrase or city"),
    "seed": ((int,), None, "an integer"),
    "resolution": ((int,), lambda v: v >= 1, "a positive integer"),
    "chat": ((bool,), None, "true or false"),
    "device": ((str,), None, "cpu, cuda or auto"),
    "diff": ((bool,), None, "true or false"),
    "criterion": ((str,), lambda v: v in CRITERIA, " or ".join(CRITERIA)),
    "kl_max": ((int, float), lambda v: v > 0, "a positive number"),
    "baseline": ((str,), None, "a path relative to the recipe"),
}
_REQUIRED = ("name", "sweep")


def load_recipe(path: str | Path) -> Recipe:
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"{path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UsageError(f"{path}: not valid YAML{where} ({getattr(exc, 'problem', exc)})") \
            from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping of keys at the top level")
    for key, value in data.items():
        if key not in _SCHEMA:
            raise UsageError(f"{path}: unknown key '{key}' (known: {', '.join(_SCHEMA)})")
        types, check, what = _SCHEMA[key]
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if not ok or (check is not None and not check(value)):
            raise UsageError(f"{path}: '{key}' must be {what}, got {value!r}")
    if data.get("kind") == "battery":
        from .battery import battery_config_from_recipe, select_prompts

        for key in ("sweep", "runtimes", "depth", "corpus", "sentinel", "resolution",
                    "criterion", "kl_max"):
            if key in data:
                raise UsageError(f"{path}: '{key}' belongs to bracket recipes, not kind: battery")
        if "name" not in data:
            raise UsageError(f"{path}: required key 'name' is missing")
        try:
            config = battery_config_from_recipe(data)
            select_prompts(config.prompts)
        except UsageError as exc:
            raise UsageError(f"{path}: {exc}") from None
        baseline = (path.parent / data["baseline"]) if "baseline" in data else None
        return Recipe(data["name"], path, config, baseline, data.get("description", ""),
                      kind="battery")
    for key in ("prompts", "long_context"):
        if key in data:
            raise UsageError(f"{path}: '{key}' belongs to kind: battery recipes")
    for key in _REQUIRED:
        if key not in data:
            raise UsageError(f"{path}: required key '{key}' is missing")
    sweep = data["sweep"]
    try:
        lengths = parse_sweep(sweep if isinstance(sweep, str) else ",".join(map(str, sweep)))
    except UsageError as exc:
        raise UsageError(f"{path}: 'sweep': {str(exc).split(': ', 1)[1]}") from None
    try:
        model, a, b = bracket_sides(data.get("model"), data.get("a"), data.get("b"))
    except UsageError as exc:
        raise UsageError(f"{path}: {exc}") from None
    config = BracketConfig(
        model=model, a=a, b=b, sweep=tuple(lengths),
        runtimes=tuple(data.get("runtimes", RUNTIME_NAMES)), depth=float(data.get("depth", 0.5)),
        max_tokens=data.get("max_tokens", 12), inject=data.get("inject") or "",
        corpus=data.get("corpus", "towns"), form=data.get("sentinel", "code"),
        seed=data.get("seed", 0), resolution=data.get("resolution", 32),
        chat=data.get("chat", False), device=data.get("device", "cpu"),
        diff=data.get("diff", True), criterion=data.get("criterion", "recall"),
        kl_max=float(data.get("kl_max", BracketConfig.kl_max)))
    baseline = (path.parent / data["baseline"]) if "baseline" in data else None
    return Recipe(data["name"], path, config, baseline, data.get("description", ""))
