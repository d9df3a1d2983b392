"""The runtime interface: open -> eval chunks -> close (Polygraphy-like).

A runtime keeps a sequence state (the KV cache). `eval` continues that sequence: the first
token of a call sits at the position where the previous call ended. `reset` empties the state
and starts again at position 0.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np


class RuntimeCrashed(RuntimeError):
    """The runtime's process died (abort, signal, exit). The message carries the exit status or
    signal and the tail of the process's stderr. The runtime cannot be used afterwards."""


class RuntimeEvalError(RuntimeError):
    """The runtime refused or failed an eval but is still alive (e.g. llama_decode returned an
    error code, the context is full). The message says why; `reset()` gives a clean state."""


TapKey = tuple[str, int]  # (canonical tap name, layer or -1)


@dataclass
class ChunkOutput:
    start: int  # position of the first token of the chunk
    logits: np.ndarray  # [T, n_vocab] float32, every position of the chunk
    # (canonical name, layer or -1) -> canonical layout (see impdiff.taps), float32, first dim T
    taps: dict[TapKey, np.ndarray] = field(default_factory=dict)
    # raw names the runtime produced but that map to no canonical tap (listed, never dropped)
    unmapped: list[str] = field(default_factory=list)

    @property
    def n_tokens(self) -> int:
        return int(self.logits.shape[0])


class Runtime(abc.ABC):
    """One engine holding one sequence. Use as a context manager."""

    name: str = "runtime"

    @abc.abstractmethod
    def eval(self, token_ids: Sequence[int], last_only: bool = False) -> ChunkOutput:
        """Run `token_ids` after the tokens already evaluated; return logits and taps.

        With `last_only`, logits come for the last position only ([1, n_vocab]): generation
        needs no more, and a 262k vocabulary over a long prompt would cost gigabytes."""

    @abc.abstractmethod
    def reset(self) -> None:
        """Clear the sequence state (KV cache); the next eval starts at position 0."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the engine. Safe to call twice."""

    @property
    @abc.abstractmethod
    def position(self) -> int:
        """Position the next eval starts at."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()
