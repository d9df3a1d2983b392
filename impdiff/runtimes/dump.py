"""Tap dumps: any engine's activations on disk, replayed as a runtime (`dump:DIR`).

An engine impdiff cannot run in-process (another language, another machine, a GPU build) writes
its canonical taps per chunk to a directory (format: docs/dump-format.md): one safetensors file
per chunk holding `logits` and tensors named `<tap>` (global taps: `inp_embd`, `result_norm`)
or `<tap>.<layer>` (`l_out.5`), in the canonical layouts of `impdiff.taps`, and a
`manifest.json` naming the token ids, positions, layouts and the producing build.
`DumpRuntime` serves those recorded chunks through the `Runtime` interface, so the diff replays
llama.cpp (or any runtime) on the recorded ids and compares. `write_dump` writes the format
from any runtime (`impdiff dump`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from ..engine.errors import ModelLoadError
from ..taps import GLOBAL_LAYER, TAPS, TapSelection
from .base import ChunkOutput, Runtime, RuntimeEvalError, TapKey

FORMAT = "impdiff-tap-dump"
VERSION = 1
LOGITS = "logits"
_TENSOR_RE = re.compile(r"^(?P<tap>[A-Za-z_][A-Za-z0-9_]*)(?:\.(?P<layer>\d+))?$")


def tensor_name(tap: str, layer: int) -> str:
    return tap if layer == GLOBAL_LAYER else f"{tap}.{layer}"


def parse_tensor_name(name: str) -> TapKey | None:
    """'l_out.5' -> ('l_out', 5); 'inp_embd' -> ('inp_embd', -1); None if not a tap name."""
    m = _TENSOR_RE.match(name)
    if not m:
        return None
    return m.group("tap"), int(m.group("layer")) if m.group("layer") is not None else GLOBAL_LAYER


def read_manifest(directory: str | Path) -> dict:
    """The manifest, checked: a bad dump is bad input (exit 2), named with the field."""
    d = Path(directory)
    path = d / "manifest.json"
    try:
        man = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelLoadError(f"{d}: not a tap dump (no readable manifest.json: "
                             f"{exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(man, dict) or man.get("format") != FORMAT:
        raise ModelLoadError(f"{path}: 'format' must be '{FORMAT}'")
    if man.get("version") != VERSION:
        raise ModelLoadError(f"{path}: 'version' {man.get('version')!r} is not supported "
                             f"(this impdiff reads version {VERSION})")
    chunks = man.get("chunks")
    if not isinstance(chunks, list) or not chunks:
        raise ModelLoadError(f"{path}: 'chunks' must be a non-empty list")
    expect = 0
    for i, c in enumerate(chunks):
        where = f"{path}: chunks[{i}]"
        if not isinstance(c, dict) or not isinstance(c.get("file"), str):
            raise ModelLoadError(f"{where}: needs 'file', 'start', 'token_ids', 'positions'")
        ids, pos = c.get("token_ids"), c.get("positions")
        if not isinstance(ids, list) or not ids or not all(isinstance(t, int) for t in ids):
            raise ModelLoadError(f"{where}: 'token_ids' must be a non-empty list of integers")
        if c.get("start") != expect:
            raise ModelLoadError(f"{where}: 'start' is {c.get('start')!r}, expected {expect} "
                                 "(chunks follow each other from position 0)")
        if pos != list(range(expect, expect + len(ids))):
            raise ModelLoadError(f"{where}: 'positions' must be {expect}..{expect + len(ids) - 1}"
                                 " (one per token id, consecutive)")
        if not (d / c["file"]).is_file():
            raise ModelLoadError(f"{where}: file {c['file']} is missing")
        expect += len(ids)
    layouts = man.get("layouts", {})
    if not isinstance(layouts, dict):
        raise ModelLoadError(f"{path}: 'layouts' must map tap names to layouts")
    for tap, layout in layouts.items():
        if tap in TAPS and layout != TAPS[tap].layout:
            raise ModelLoadError(f"{path}: layouts: tap '{tap}' is recorded as '{layout}'; the "
                                 f"canonical layout is '{TAPS[tap].layout}' (impdiff.taps)")
    return man


class DumpRuntime(Runtime):
    """Replays a dump. `eval` must ask for the recorded ids at the recorded positions (in any
    chunking); it returns the recorded logits and the taps the selection wants."""

    name = "dump"

    def __init__(self, directory: str | Path, *, taps: TapSelection | None = None, **_ignored):
        self.dir = Path(directory)
        self.manifest = read_manifest(self.dir)
        self.selection = taps
        self.chunks = self.manifest["chunks"]
        self.token_ids = [int(t) for c in self.chunks for t in c["token_ids"]]
        self.producer = self.manifest.get("producer", {})
        self._pos = 0
        self._cache: tuple[int, dict] | None = None  # (chunk index, its tensors)
        self._check_files()

    def _check_files(self) -> None:
        from safetensors import safe_open

        for i, c in enumerate(self.chunks):
            path = self.dir / c["file"]
            n = len(c["token_ids"])
            try:
                with safe_open(str(path), framework="numpy") as f:
                    names = list(f.keys())
                    shapes = {k: f.get_slice(k).get_shape() for k in names}
            except Exception as exc:
                raise ModelLoadError(f"{path}: not a readable safetensors file ({exc})") from None
            if LOGITS not in shapes:
                raise ModelLoadError(f"{path}: no '{LOGITS}' tensor")
            for k, shape in shapes.items():
                if not shape or shape[0] != n:
                    raise ModelLoadError(f"{path}: tensor '{k}' has shape {list(shape)}; its "
                                         f"first dimension must be the chunk's {n} positions")

    def _chunk(self, i: int) -> dict[str, np.ndarray]:
        if self._cache is None or self._cache[0] != i:
            from safetensors.numpy import load_file

            path = self.dir / self.chunks[i]["file"]
            try:
                arrays = load_file(str(path))
            except Exception as exc:
                raise RuntimeEvalError(f"{path}: cannot read ({exc})") from None
            self._cache = (i, arrays)
        return self._cache[1]

    @property
    def position(self) -> int:
        return self._pos

    def reset(self) -> None:
        self._pos = 0

    def close(self) -> None:
        self._cache = None

    def eval(self, token_ids: Sequence[int], last_only: bool = False) -> ChunkOutput:
        ids = [int(t) for t in token_ids]
        if not ids:
            raise ValueError("eval: no token ids")
        start, end = self._pos, self._pos + len(ids)
        if end > len(self.token_ids):
            raise RuntimeEvalError(f"dump {self.dir}: recorded {len(self.token_ids)} positions; "
                                   f"asked for positions {start}..{end - 1}")
        for p, t in zip(range(start, end), ids):
            if self.token_ids[p] != t:
                raise RuntimeEvalError(f"dump {self.dir}: recorded token {self.token_ids[p]} at "
                                       f"position {p}; asked to evaluate token {t}")
        pieces: dict[str, list[np.ndarray]] = {}
        lo = 0
        for i, c in enumerate(self.chunks):
            n = len(c["token_ids"])
            c_lo, c_hi = max(start, lo), min(end, lo + n)
            if c_lo < c_hi:
                for name, arr in self._chunk(i).items():
                    pieces.setdefault(name, []).append(arr[c_lo - lo:c_hi - lo])
            lo += n
        logits = np.concatenate(pieces.pop(LOGITS)).astype(np.float32)
        taps: dict[TapKey, np.ndarray] = {}
        unmapped: list[str] = []
        for name, parts in pieces.items():
            key = parse_tensor_name(name)
            if key is None or key[0] not in TAPS or TAPS[key[0]].per_layer != (key[1] >= 0):
                unmapped.append(name)
                continue
            if self.selection is not None and self.selection.wants(*key):
                taps[key] = np.concatenate(parts).astype(np.float32)
        out_key = ("result_output", GLOBAL_LAYER)
        if (self.selection is not None and out_key not in taps
                and self.selection.wants(*out_key)):
            taps[out_key] = logits  # the logits are the result_output tap
        self._pos = end
        return ChunkOutput(start, logits[-1:] if last_only else logits, taps, sorted(unmapped))


def write_dump(runtime: Runtime, token_ids: Sequence[int], out_dir: str | Path, *,
               chunk: int = 512, producer: dict | None = None, model: dict | None = None,
               on_chunk=None) -> Path:
    """Run `token_ids` through `runtime` (with taps on) and write the dump format."""
    from safetensors.numpy import save_file

    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    runtime.reset()
    chunks, layouts = [], {}
    for lo in range(0, len(token_ids), chunk):
        ids = [int(t) for t in token_ids[lo:lo + chunk]]
        out = runtime.eval(ids)
        tensors = {LOGITS: np.ascontiguousarray(out.logits, dtype=np.float32)}
        for (tap, layer), arr in out.taps.items():
            tensors[tensor_name(tap, layer)] = np.ascontiguousarray(arr, dtype=np.float32)
            layouts[tap] = TAPS[tap].layout
        name = f"chunk-{len(chunks):05d}.safetensors"
        save_file(tensors, str(d / name), metadata={"start": str(out.start)})
        chunks.append({"file": name, "start": out.start, "token_ids": ids,
                       "positions": list(range(out.start, out.start + len(ids)))})
        if on_chunk:
            on_chunk(lo + len(ids), len(token_ids))
    manifest = {"format": FORMAT, "version": VERSION, "producer": producer or {},
                "model": model or {}, "layouts": dict(sorted(layouts.items())), "chunks": chunks}
    (d / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return d
