"""`impdiff bench`: prefill and decode speed of the engine and llama.cpp, llama-bench style.

pp N: N prompt tokens in one eval on a fresh context; tg N: N tokens decoded one at a time on a
fresh context. Each is repeated and reported as mean ± sd tokens/s. llama.cpp is timed inside its
worker process (no round trip per token), as llama-bench times it; the engine's fast path decodes
through its CUDA graph; the reference engine through the Runtime interface.
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


class RuntimeTimer:
    """Any Runtime: pp is one eval, tg one eval per token with its logits read back."""

    def __init__(self, runtime):
        self.runtime = runtime

    def prefill(self, ids: list[int]) -> float:
        self.runtime.reset()
        t0 = time.perf_counter()
        self.runtime.eval(ids, last_only=True)
        return time.perf_counter() - t0

    def decode(self, ids: list[int]) -> float:
        self.runtime.reset()
        t0 = time.perf_counter()
        for token in ids:
            self.runtime.eval([token], last_only=True)
        return time.perf_counter() - t0


class LlamaCppTimer:
    """llama.cpp timed inside its worker, the way llama-bench times itself."""

    def __init__(self, runtime):
        self.runtime = runtime

    def prefill(self, ids: list[int]) -> float:
        return self.runtime.timed("pp", ids)

    def decode(self, ids: list[int]) -> float:
        return self.runtime.timed("tg", ids)


class FastEngineTimer:
    """The engine's fast path: pp is a chunked prefill; tg is greedy decode through the CUDA
    graph, each token picked on the GPU and fed back, one host sync at the end."""

    def __init__(self, session):
        self.session = session

    def _sync(self):
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def prefill(self, ids: list[int]) -> float:
        self.session.reset()
        self._sync()
        t0 = time.perf_counter()
        self.session.eval(ids, last_only=True)
        self._sync()
        return time.perf_counter() - t0

    def decode(self, ids: list[int]) -> float:
        self.session.reset()
        self._sync()
        t0 = time.perf_counter()
        self.session.generate_greedy(ids[:1], len(ids))
        return time.perf_counter() - t0


def bench(timers: dict[str, object], n_prompt: int, n_gen: int, reps: int, n_vocab: int,
          bytes_per_token: int, on_step: Callable[[str], None] = lambda s: None
          ) -> list[BenchRow]:
    rng = np.random.default_rng(0)
    ids = rng.integers(10, n_vocab, max(n_prompt, n_gen, 32)).tolist()
    rows = []
    for name, timer in timers.items():
        on_step(f"{name}: warm-up")  # the same lengths as the tests (a graph is per length)
        timer.prefill(ids[:max(n_prompt, 1)])
        timer.decode(ids[:4])
        for test, n, run in (("pp", n_prompt, timer.prefill), ("tg", n_gen, timer.decode)):
            if not n:
                continue
            speeds = []
            for r in range(reps):
                on_step(f"{name}: {test}{n} {r + 1}/{reps}")
                speeds.append(n / run(ids[:n]))
            rows.append(BenchRow(name, f"{test}{n}", speeds, bytes_per_token))
    return rows
