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
    """Positions are counted from the taps themselves: every forward starts with `inp_embd`,
    one row per token of its chunk; a tap with fewer rows (the last position's logits) holds
    the chunk's last positions."""

    def __init__(self):
        self._rows: list[tuple[str, int, int, int, torch.Tensor]] = []
        self._chunk_end = 0

    def __call__(self, name: str, layer: int, x: torch.Tensor) -> None:
        if name == "inp_embd":
            self._chunk_end += x.shape[0]
        start = self._chunk_end - x.shape[0]
        self._rows.append((name, layer, start, x[0].numel(), row_stats(x)))

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
