"""`impdiff bench`: prefill and decode speed of the engine and llama.cpp, llama-bench style.

pp N: N prompt tokens in one eval on a fresh context; tg N: N tokens decoded one at a time on a
fresh context. Each is repeated and reported as mean ± sd tokens/s. Both runtimes go through the
same Runtime interface; llama.cpp's numbers include its process boundary (one round trip per
decoded token), which is small beside a decode step but is not zero.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass
class BenchRow:
    runtime: str
    test: str  # "pp512" | "tg128"
    tokens_per_s: list[float]
    bytes_per_token: int  # weight bytes read per decoded token (the decode roofline's numerator)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.tokens_per_s)

    @property
    def sd(self) -> float:
        return statistics.stdev(self.tokens_per_s) if len(self.tokens_per_s) > 1 else 0.0


def weight_bytes(gguf_file) -> int:
    """Bytes of the weights one decode step reads: every tensor once, the embedding one row."""
    total = 0
    for name, raw in gguf_file.tensors.items():
        if name == "token_embd.weight" and "output.weight" in gguf_file.tensors:
            total += raw.data.nbytes // raw.shape[0]
        else:
            total += raw.data.nbytes
    return total


def time_prefill(runtime, ids: list[int]) -> float:
    runtime.reset()
    t0 = time.perf_counter()
    runtime.eval(ids, last_only=True)
    return time.perf_counter() - t0


def time_decode(runtime, n: int, first: int) -> float:
    runtime.reset()
    token = first
    t0 = time.perf_counter()
    for _ in range(n):
        token = int(runtime.eval([token], last_only=True).logits[-1].argmax())
    return time.perf_counter() - t0


def bench(runtimes: dict[str, object], n_prompt: int, n_gen: int, reps: int, n_vocab: int,
          bytes_per_token: int, on_step: Callable[[str], None] = lambda s: None
          ) -> list[BenchRow]:
    rng = np.random.default_rng(0)
    ids = rng.integers(10, n_vocab, n_prompt).tolist()
    rows = []
    for name, rt in runtimes.items():
        on_step(f"{name}: warm-up")
        time_prefill(rt, ids[:32])
        if n_prompt:
            speeds = []
            for r in range(reps):
                on_step(f"{name}: pp{n_prompt} {r + 1}/{reps}")
                speeds.append(n_prompt / time_prefill(rt, ids))
            rows.append(BenchRow(name, f"pp{n_prompt}", speeds, bytes_per_token))
        if n_gen:
            speeds = []
            for r in range(reps):
                on_step(f"{name}: tg{n_gen} {r + 1}/{reps}")
                speeds.append(n_gen / time_decode(rt, n_gen, ids[0]))
            rows.append(BenchRow(name, f"tg{n_gen}", speeds, bytes_per_token))
    return rows
