"""CUDA C kernels compiled at run time: nvcc to a cubin (cached by source and flags), loaded and
launched through the driver API with ctypes.

The driver API rather than a torch extension: a cubin of a small kernel compiles in seconds with
no host compiler, torch headers or ninja, and a launch goes onto torch's current stream, so it
is captured into CUDA graphs like any other kernel.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

CACHE_ENV = "IMPDIFF_CUBIN_CACHE"
_MAX_DYNAMIC_SHARED = 8  # CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
_PROGRAMMATIC_STREAM_SERIALIZATION = 6  # CUlaunchAttributeID


class _LaunchAttribute(ctypes.Structure):  # CUlaunchAttribute: id, padding, a 64-byte union
    _fields_ = [("id", ctypes.c_int), ("pad", ctypes.c_char * 4), ("value", ctypes.c_int),
                ("rest", ctypes.c_char * 60)]


class _LaunchConfig(ctypes.Structure):  # CUlaunchConfig
    _fields_ = [("grid", ctypes.c_uint * 3), ("block", ctypes.c_uint * 3),
                ("shared", ctypes.c_uint), ("stream", ctypes.c_void_p),
                ("attrs", ctypes.POINTER(_LaunchAttribute)), ("num_attrs", ctypes.c_uint)]


class CudaBuildError(RuntimeError):
    pass


@functools.cache
def nvcc_path() -> str | None:
    for candidate in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")):
        if candidate and (Path(candidate) / "bin" / "nvcc").is_file():
            return str(Path(candidate) / "bin" / "nvcc")
    found = shutil.which("nvcc")
    if found:
        return found
    default = Path("/usr/local/cuda/bin/nvcc")
    return str(default) if default.is_file() else None


def _cache_dir() -> Path:
    path = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "impdiff" / "cubin")
    path.mkdir(parents=True, exist_ok=True)
    return path


def local_headers(source: Path) -> list[Path]:
    """The headers `source` includes by a quoted name from its own folder: part of the cache key,
    so that a changed header rebuilds every kernel that includes it."""
    names = re.findall(r'^\s*#include\s+"([^"]+)"', source.read_text(), flags=re.MULTILINE)
    return [source.parent / name for name in names]


def compile_cubin(source: Path, arch: str, defines: dict[str, int]) -> bytes:
    """The cubin of `source` for `arch` (e.g. "sm_90") with -D`defines`, from the cache when
    the same source and flags were compiled before."""
    nvcc = nvcc_path()
    if nvcc is None:
        raise CudaBuildError("nvcc not found (set CUDA_HOME): the CUDA kernels compile at run time")
    flags = ["-cubin", f"-arch={arch}", "-O3", "-std=c++17",
             *(f"-D{k}={v}" for k, v in sorted(defines.items()))]
    text = source.read_bytes() + b"".join(h.read_bytes() for h in local_headers(source))
    key = hashlib.sha256(text + " ".join(flags).encode()).hexdigest()[:24]
    cached = _cache_dir() / f"{source.stem}-{key}.cubin"
    if cached.is_file():
        return cached.read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "out.cubin"
        result = subprocess.run([nvcc, *flags, "-o", str(target), str(source)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise CudaBuildError(f"nvcc failed on {source.name} ({' '.join(flags)}):\n"
                                 f"{result.stderr.strip()}")
        image = target.read_bytes()
    partial = cached.with_suffix(f".{os.getpid()}.tmp")
    partial.write_bytes(image)
    partial.replace(cached)  # atomic: a concurrent compile never reads half a file
    return image


@functools.cache
def _libcuda():
    lib = ctypes.CDLL("libcuda.so.1")
    lib.cuGetErrorString.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]
    return lib


def _check(result: int, what: str):
    if result != 0:
        msg = ctypes.c_char_p()
        _libcuda().cuGetErrorString(result, ctypes.byref(msg))
        raise RuntimeError(f"CUDA driver: {what} failed: {(msg.value or b'?').decode()}")


class Kernel:
    """One __global__ function of a cubin, loaded into the primary context of `device`."""

    def __init__(self, image: bytes, name: str, device: torch.device):
        lib = _libcuda()
        torch.cuda.init()
        index = device.index if device.index is not None else torch.cuda.current_device()
        ctx, dev = ctypes.c_void_p(), ctypes.c_int()
        _check(lib.cuDeviceGet(ctypes.byref(dev), index), "cuDeviceGet")
        # torch's own context: the module's kernels then run on torch's streams
        _check(lib.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
        _check(lib.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
        self._module, self._fn = ctypes.c_void_p(), ctypes.c_void_p()
        self._image = ctypes.create_string_buffer(image)  # alive as long as the module
        _check(lib.cuModuleLoadData(ctypes.byref(self._module), self._image), "cuModuleLoadData")
        _check(lib.cuModuleGetFunction(ctypes.byref(self._fn), self._module, name.encode()),
               f"cuModuleGetFunction({name})")
        self.name, self._shared_limit = name, 48 * 1024

    def _allow_shared(self, shared: int):
        if shared > self._shared_limit:  # above 48 KB a kernel must opt in
            _check(_libcuda().cuFuncSetAttribute(self._fn, _MAX_DYNAMIC_SHARED, shared),
                   f"{self.name}: {shared} bytes of shared memory")
            self._shared_limit = shared

    @functools.lru_cache(maxsize=64)
    def blocks_per_sm(self, threads: int, shared: int) -> int:
        """How many blocks of this shape an SM holds at once (registers, shared memory)."""
        self._allow_shared(shared)
        count = ctypes.c_int()
        _check(_libcuda().cuOccupancyMaxActiveBlocksPerMultiprocessor(
            ctypes.byref(count), self._fn, threads, ctypes.c_size_t(shared)),
            "cuOccupancyMaxActiveBlocksPerMultiprocessor")
        return count.value

    def __call__(self, grid: tuple[int, int], threads: int, shared: int, stream: int, *args,
                 pdl: bool = False):
        """Launch on `stream`; `pdl`: as a programmatic dependent of the kernel before it
        (kernels/launch.py)."""
        lib = _libcuda()
        self._allow_shared(shared)
        values = [ctypes.c_void_p(a.data_ptr()) if isinstance(a, torch.Tensor)
                  else ctypes.c_float(a) if isinstance(a, float) else ctypes.c_int(a)
                  for a in args]
        params = (ctypes.c_void_p * len(values))(*(ctypes.addressof(v) for v in values))
        attr = _LaunchAttribute(id=_PROGRAMMATIC_STREAM_SERIALIZATION, value=1)
        config = _LaunchConfig((grid[0], grid[1], 1), (threads, 1, 1), shared, stream,
                               ctypes.pointer(attr), 1 if pdl else 0)
        _check(lib.cuLaunchKernelEx(ctypes.byref(config), self._fn, params, None),
               f"launch {self.name}")
