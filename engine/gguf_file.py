"""Reading GGUF files: metadata as plain Python values, tensors as memory-mapped raw bytes.

The format's constants (value types, quantisation block sizes) come from the `gguf` package.
The header is parsed here rather than by `gguf.GGUFReader`: the reader builds numpy memmap
views per element and takes ~25 s on Gemma 3's 262k-entry vocabulary, which every command
would pay; a struct-based walk takes a fraction of a second. Every read is bounds-checked, so a
truncated or corrupt file gives one `ModelLoadError` that names the file and what was expected.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ModelLoadError

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32


@dataclass(frozen=True)
class RawTensor:
    """One tensor as stored: `shape` is in torch order (the last dim is ggml's ne[0])."""

    name: str
    qtype: int  # gguf.GGMLQuantizationType value
    shape: tuple[int, ...]
    data: np.ndarray  # memory-mapped bytes (uint8)


class _Cursor:
    """Bounds-checked little-endian reads from a buffer."""

    def __init__(self, buf, path: Path):
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, fmt: str, what: str):
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise ModelLoadError(f"{self.path}: truncated GGUF: file ends at byte {len(self.buf)} "
                                 f"while reading {what}")
        values = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return values if len(values) > 1 else values[0]

    def string(self, what: str) -> str:
        n = self.take("<Q", what)
        if self.pos + n > len(self.buf):
            raise ModelLoadError(f"{self.path}: truncated or corrupt GGUF: {what} claims {n} bytes "
                                 f"at byte {self.pos}, past the end of the file ({len(self.buf)})")
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return raw.decode("utf-8", errors="replace")


def _value_formats():
    from gguf import GGUFValueType as V

    return {V.UINT8: "<B", V.INT8: "<b", V.UINT16: "<H", V.INT16: "<h", V.UINT32: "<I",
            V.INT32: "<i", V.FLOAT32: "<f", V.BOOL: "<?", V.UINT64: "<Q", V.INT64: "<q",
            V.FLOAT64: "<d"}


class GGUFFile:
    """A GGUF file opened read-only and memory-mapped."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelLoadError(f"{self.path}: no such file")
        with open(self.path, "rb") as f:
            magic = f.read(4)
            if magic != GGUF_MAGIC:
                raise ModelLoadError(
                    f"{self.path}: not a GGUF file (starts with {magic!r}, expected b'GGUF')")
            self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self.metadata: dict[str, Any] = {}
        self.value_types: dict[str, int] = {}  # key -> gguf.GGUFValueType (for rewriting files)
        self.tensors: dict[str, RawTensor] = {}
        self._parse()

    # -- parsing ---------------------------------------------------------------------------------

    def _parse(self) -> None:
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        cur = _Cursor(self._mmap, self.path)
        cur.pos = 4
        version = cur.take("<I", "the version")
        if version not in (2, 3):
            raise ModelLoadError(f"{self.path}: GGUF version {version} is not supported "
                                 "(expected 2 or 3)")
        n_tensors, n_kv = cur.take("<QQ", "the tensor and key counts")
        # every entry takes at least 8 bytes: counts beyond that are corrupt, not just large
        for count, what in ((n_tensors, "tensor count"), (n_kv, "metadata key count")):
            if count * 8 > len(self._mmap):
                raise ModelLoadError(f"{self.path}: corrupt GGUF header: {what} {count} cannot "
                                     f"fit in a {len(self._mmap)}-byte file")
        formats = _value_formats()
        for i in range(n_kv):
            key = cur.string(f"metadata key #{i}")
            vtype = cur.take("<I", f"the type of '{key}'")
            self.value_types[key] = vtype
            self.metadata[key] = self._value(cur, vtype, key, formats)

        infos = []
        for i in range(n_tensors):
            name = cur.string(f"tensor name #{i}")
            n_dims = cur.take("<I", f"the rank of tensor '{name}'")
            if n_dims > 8:
                raise ModelLoadError(f"{self.path}: tensor '{name}' has rank {n_dims} (at most 8)")
            dims = [cur.take("<Q", f"the shape of tensor '{name}'") for _ in range(n_dims)]
            qtype, offset = cur.take("<IQ", f"the type and offset of tensor '{name}'")
            infos.append((name, dims, qtype, offset))

        alignment = int(self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)) or 1
        data_start = -(-cur.pos // alignment) * alignment
        file_size = len(self._mmap)
        data = np.frombuffer(self._mmap, dtype=np.uint8)
        for name, dims, qtype, offset in infos:
            try:
                block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(qtype)]
            except (ValueError, KeyError):
                raise ModelLoadError(f"{self.path}: tensor '{name}' has unknown type id {qtype}") \
                    from None
            n_elem = int(np.prod(dims, dtype=np.uint64)) if dims else 1
            if dims and dims[0] % block:
                raise ModelLoadError(f"{self.path}: tensor '{name}' rows of {dims[0]} are not a "
                                     f"multiple of its block size {block}")
            n_bytes = n_elem // block * type_size
            start = data_start + offset
            if start + n_bytes > file_size:
                raise ModelLoadError(
                    f"{self.path}: truncated GGUF: tensor '{name}' needs bytes {start}.."
                    f"{start + n_bytes} but the file has {file_size}")
            shape = tuple(int(d) for d in reversed(dims))
            self.tensors[name] = RawTensor(name, qtype, shape, data[start:start + n_bytes])

    def _value(self, cur: _Cursor, vtype: int, key: str, formats) -> Any:
        from gguf import GGUFValueType as V

        if vtype == V.STRING:
            return cur.string(f"the value of '{key}'")
        if vtype == V.ARRAY:
            item_type, n = cur.take("<IQ", f"the array header of '{key}'")
            if n > len(cur.buf) - cur.pos:
                raise ModelLoadError(f"{self.path}: corrupt GGUF: '{key}' claims {n} entries, "
                                     "more than the bytes left in the file")
            if item_type in formats:  # numbers: one vectorised read
                fmt = formats[item_type]
                size = struct.calcsize(fmt)
                if cur.pos + n * size > len(cur.buf):
                    raise ModelLoadError(f"{self.path}: truncated GGUF: file ends inside '{key}'")
                arr = np.frombuffer(cur.buf, dtype=np.dtype(fmt), count=n, offset=cur.pos)
                cur.pos += n * size
                return arr.tolist()
            return [self._value(cur, item_type, key, formats) for _ in range(n)]
        if vtype not in formats:
            raise ModelLoadError(f"{self.path}: metadata '{key}' has unknown value type {vtype}")
        return cur.take(formats[vtype], f"the value of '{key}'")

    # -- access ----------------------------------------------------------------------------------

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
