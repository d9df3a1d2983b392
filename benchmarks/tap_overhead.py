"""Engine prefill time with taps off vs every tap captured, in one run.

    python benchmarks/tap_overhead.py [--model gemma3-270m] [--tokens 2048] [--device cpu] [-r 3]
    python benchmarks/tap_overhead.py --fast [--model ...]   # the CUDA fast path

Both runs compute logits for every position (the `result_output` tap needs them), so the ratio
is the cost of the taps themselves: the `emit` calls and copying each activation out. With
--fast the engine's fast path runs on CUDA and every tap reduces to per-position statistics
on the GPU (`impdiff.tap_stats.GpuTapStats`), read back once at the end.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from impdiff.engine.loader import load_gguf_model
from impdiff.prompts import filler_ids
from impdiff.real_models import resolve_model
from impdiff.runtimes.engine import EngineRuntime
from impdiff.taps import TapSelection


def timed(runtime, ids) -> float:
    runtime.reset()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = runtime.eval(ids)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0, sum(v.nbytes for v in out.taps.values())


def timed_fast(session, ids, tap) -> float:
    session.reset()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    session.eval(ids, tap=tap)
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def main_fast(args, path, ids):
    from impdiff.engine.fast import FastSession, load_fast_model
    from impdiff.tap_stats import GpuTapStats

    session = FastSession(load_fast_model(path, "cuda", max_ctx=args.tokens + 8), args.ubatch)
    # warm with the timed length: its ubatch graphs are captured (and compiled) here, not in
    # the first timed run
    timed_fast(session, ids, None)
    timed_fast(session, ids, GpuTapStats())
    off, on = [], []
    for _ in range(args.reps):
        off.append(timed_fast(session, ids, None))
        stats = GpuTapStats()
        t0 = time.perf_counter()
        on.append(timed_fast(session, ids, stats))
        table = stats.table()
        read = time.perf_counter() - t0 - on[-1]
    m_off, m_on = statistics.median(off), statistics.median(on)
    print(f"{path.name}, fast path on {torch.cuda.get_device_name()}, {args.tokens}-token "
          f"prefill, median of {args.reps} reps:")
    print(f"  taps off: {m_off * 1e3:.1f} ms ({args.tokens / m_off:.0f} tok/s)")
    print(f"  all taps as GPU statistics: {m_on * 1e3:.1f} ms, {len(table)} rows "
          f"({table.tap.nunique()} taps x layers x positions), read back in {read * 1e3:.0f} ms")
    print(f"  overhead: {m_on / m_off:.2f}x")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("-r", "--reps", type=int, default=3)
    ap.add_argument("--ubatch", type=int, default=512)
    ap.add_argument("--fast", action="store_true", help="the CUDA fast path, statistics taps")
    args = ap.parse_args()
    path = resolve_model(args.model)
    loaded = load_gguf_model(path, "cpu" if args.fast else args.device)
    ids = filler_ids(loaded.tokenizer, args.tokens)
    if args.fast:
        return main_fast(args, path, ids)
    plain = EngineRuntime(path, n_ctx=args.tokens + 8, n_ubatch=args.ubatch, loaded=loaded)
    tapped = EngineRuntime(path, n_ctx=args.tokens + 8, n_ubatch=args.ubatch, loaded=loaded,
                           taps=TapSelection())
    timed(plain, ids[:64])
    off, on, nbytes = [], [], 0
    for _ in range(args.reps):
        off.append(timed(plain, ids)[0])
        t, nbytes = timed(tapped, ids)
        on.append(t)
    m_off, m_on = statistics.fmean(off), statistics.fmean(on)
    print(f"{path.name} on {loaded.model.device}, {args.tokens}-token prefill, {args.reps} reps:")
    print(f"  taps off: {m_off:.2f} s ({args.tokens / m_off:.0f} tok/s)")
    print(f"  all taps: {m_on:.2f} s ({args.tokens / m_on:.0f} tok/s), {nbytes / 2**20:.0f} MiB "
          f"captured")
    print(f"  overhead: {m_on / m_off:.2f}x")


if __name__ == "__main__":
    main()
