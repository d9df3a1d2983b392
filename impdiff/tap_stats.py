"""A tap that keeps per-position statistics on the GPU instead of copying activations out.

A full capture moves every activation to the host (gigabytes for a long prefill); this tap
reduces each one to `impdiff.kernels.stats.STATS` per position on the device and holds
the [T, 4] results on the device until `table()` reads them all back at once.

The engine's fast path can also capture a forward with this tap in a CUDA graph: it asks for a
`StatsRecorder`, runs the forward with it during capture, and after every replay hands the
recorder back to `collect`, which keeps a copy of what that replay computed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from .kernels.stats import STATS, row_stats, row_stats_many


class StatsRecorder:
    """The statistics of one captured forward: outputs at fixed addresses that every replay of
    the graph writes again, gathered into one buffer by a last captured copy. A layer's taps
    reduce in one launch when the layer ends (held until then; the forward changes no tapped
    tensor in place), so a tapped forward costs about one launch more per layer."""

    def __init__(self):
        self.entries: list[tuple[str, int, int, int]] = []  # tap, layer, rows, values per row
        self._outputs: list[torch.Tensor] = []
        self._pending: list[torch.Tensor] = []
        self._layer: int | None = None
        self.buffer: torch.Tensor | None = None

    def __call__(self, name: str, layer: int, x: torch.Tensor) -> None:
        if self._pending and (layer != self._layer or x.shape[0] != self._pending[0].shape[0]):
            self._flush()
        self.entries.append((name, layer, x.shape[0], x[0].numel()))
        self._layer = layer
        self._pending.append(x)

    def _flush(self) -> None:
        if self._pending:  # [taps, rows, 4] in entry order: each tap's rows in turn
            self._outputs.append(row_stats_many(self._pending).view(-1, 4))
            self._pending = []

    def finish(self) -> None:
        """Call at the end of the forward (inside the capture): one copy per replay."""
        self._flush()
        self.buffer = torch.cat(self._outputs)


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

    def recorder(self) -> StatsRecorder:
        return StatsRecorder()

    def collect(self, recorder: StatsRecorder, chunk_end: int) -> None:
        """Keep what the recorder's forward computed for a chunk ending at `chunk_end`."""
        data, offset = recorder.buffer.clone(), 0
        for name, layer, rows, n in recorder.entries:
            self._rows.append((name, layer, chunk_end - rows, n, data[offset:offset + rows]))
            offset += rows
        self._chunk_end = chunk_end

    def table(self) -> pd.DataFrame:
        """One row per (tap, layer, position): rms, absmax, mean, nonfinite."""
        if not self._rows:
            return pd.DataFrame()
        names, layers, starts, widths, stats = zip(*self._rows)
        counts = [s.shape[0] for s in stats]
        s = torch.cat(stats).cpu().numpy()  # one read back for the whole run
        n = np.repeat(widths, counts)
        return pd.DataFrame({
            "tap": np.repeat(names, counts), "layer": np.repeat(layers, counts),
            "position": np.concatenate([np.arange(a, a + c) for a, c in zip(starts, counts)]),
            "rms": np.sqrt(s[:, STATS.index("sumsq")] / n),
            "absmax": s[:, STATS.index("absmax")], "mean": s[:, STATS.index("sum")] / n,
            "nonfinite": s[:, STATS.index("nonfinite")].astype(int)})
