"""A tap that keeps per-position statistics on the GPU instead of copying activations out.

A full capture moves every activation to the host (gigabytes for a long prefill); this tap
reduces each one to `impdiff.kernels.stats.STATS` per position with one kernel launch and holds
the [T, 4] results on the device until `table()` reads them all back at once.
"""

from __future__ import annotations

import pandas as pd
import torch

from .kernels.stats import STATS, row_stats


class GpuTapStats:
    def __init__(self):
        self._rows: list[tuple[str, int, int, int, torch.Tensor]] = []
        self._position = 0

    def advance(self, n_tokens: int) -> None:
        """Positions of the next chunk start here (call after each eval)."""
        self._position += n_tokens

    def __call__(self, name: str, layer: int, x: torch.Tensor) -> None:
        self._rows.append((name, layer, self._position, x[0].numel(), row_stats(x)))

    def table(self) -> pd.DataFrame:
        """One row per (tap, layer, position): rms, absmax, mean, nonfinite."""
        frames = []
        for name, layer, start, n, stats in self._rows:
            s = pd.DataFrame(stats.cpu().numpy(), columns=list(STATS))
            frames.append(pd.DataFrame({
                "tap": name, "layer": layer, "position": range(start, start + len(s)),
                "rms": (s["sumsq"] / n) ** 0.5, "absmax": s["absmax"], "mean": s["sum"] / n,
                "nonfinite": s["nonfinite"].astype(int)}))
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
