"""Our own engine as a runtime: taps come from its `emit` points, in canonical layout already."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..engine.faults import FaultSet
from ..engine.generate import Session
from ..engine.loader import load_model
from ..taps import TapSelection
from .base import ChunkOutput, Runtime, RuntimeEvalError, TapKey


class EngineRuntime(Runtime):
    name = "engine"

    def __init__(self, model_path: str | Path, *, taps: TapSelection | None = None,
                 device: str = "cpu", faults: FaultSet = FaultSet(), n_ctx: int = 4096,
                 n_ubatch: int = 512, loaded=None):
        self.loaded = loaded or load_model(model_path, device, faults)
        self.session = Session(self.loaded.model, n_ctx=n_ctx, n_ubatch=n_ubatch)
        self.selection = taps

    @property
    def position(self) -> int:
        return self.session.pos

    def reset(self) -> None:
        self.session.reset()

    def close(self) -> None:
        pass

    def eval(self, token_ids: Sequence[int], last_only: bool = False,
             patches: dict[TapKey, np.ndarray] | None = None) -> ChunkOutput:
        """`patches` replaces activations: (tap, layer) -> array for this chunk's positions.

        The debugger's substitution check feeds the reference runtime's activation in this way.
        """
        start = self.session.pos
        captured: dict[TapKey, list[np.ndarray]] = {}
        selection, session = self.selection, self.session

        def tap(name: str, layer: int, x: torch.Tensor):
            key = (name, layer)
            # the engine's own value is captured, then replaced (a patched router choice is
            # still compared as the engine made it)
            if selection is not None and selection.wants(name, layer):
                captured.setdefault(key, []).append(x.detach().float().cpu().numpy())
            if patches and key in patches:
                lo = session.pos - start
                x = torch.as_tensor(patches[key][lo:lo + x.shape[0]], device=x.device,
                                    dtype=x.dtype)
            return x

        need_tap = selection is not None or bool(patches)
        try:
            logits = session.eval(token_ids, tap if need_tap else None, all_logits=not last_only)
        except ValueError as exc:  # context full
            raise RuntimeEvalError(str(exc)) from None
        taps = {k: np.concatenate(v) if len(v) > 1 else v[0] for k, v in captured.items()}
        return ChunkOutput(start, logits.float().cpu().numpy(), taps)
