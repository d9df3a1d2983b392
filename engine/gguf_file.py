"""Reading GGUF files: metadata as plain Python values, tensors as memory-mapped raw bytes.

Parsing is done by the `gguf` package; this module adds the checks it does not make and turns
its exceptions into one-line `ModelLoadError`s that name the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ModelLoadError

GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class RawTensor:
    """One tensor as stored: `shape` is in torch order (the last dim is ggml's ne[0])."""

    name: str
    qtype: int  # gguf.GGMLQuantizationType value
    shape: tuple[int, ...]
    data: np.ndarray  # memory-mapped bytes (uint8) or a typed view for float types


class GGUFFile:
    """A GGUF file opened read-only and memory-mapped."""

    def __init__(self, path: str | Path):
        import gguf

        self.path = Path(path)
        if not self.path.is_file():
            raise ModelLoadError(f"{self.path}: no such file")
        with open(self.path, "rb") as f:
            magic = f.read(4)
        if magic != GGUF_MAGIC:
            raise ModelLoadError(
                f"{self.path}: not a GGUF file (starts with {magic!r}, expected b'GGUF')"
            )
        try:
            self._reader = gguf.GGUFReader(self.path, "r")
        except Exception as exc:  # the gguf package raises many kinds on corrupt files
            raise ModelLoadError(
                f"{self.path}: corrupt or truncated GGUF ({type(exc).__name__}: {exc})"
            ) from None
        self.metadata: dict[str, Any] = {}
        for name, field in self._reader.fields.items():
            if name.startswith("GGUF."):
                continue
            self.metadata[name] = _field_value(field)
        self.tensors: dict[str, RawTensor] = {}
        for t in self._reader.tensors:
            shape = tuple(int(d) for d in reversed(t.shape.tolist()))
            self.tensors[t.name] = RawTensor(t.name, int(t.tensor_type), shape, t.data)

    @property
    def architecture(self) -> str:
        return self.require("general.architecture")

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def require(self, key: str) -> Any:
        if key not in self.metadata:
            raise ModelLoadError(f"{self.path}: metadata key '{key}' is missing")
        return self.metadata[key]

    def tensor(self, name: str) -> RawTensor:
        if name not in self.tensors:
            raise ModelLoadError(f"{self.path}: tensor '{name}' is missing")
        return self.tensors[name]


def _field_value(field) -> Any:
    # ReaderField.contents() decodes strings and arrays; arrays of strings come back as lists.
    value = field.contents()
    if isinstance(value, np.generic):
        return value.item()
    return value
