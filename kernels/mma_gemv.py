"""The K-quant decode GEMV on tensor cores, compiled at run time, in two kinds of operands:

* "f16" (`cuda/q4k_mma_gemv.cu`, Q4_K): fields turned into fp16 products q * s, the activation
  as three fp16 parts (float32's precision);
* "i8" (`cuda/kquant_imma_gemv.cu`, Q4_K and Q6_K): fields as the bytes they are in an integer
  mma, the activation as 16 bits a value per group of 32 (~1e-5 of a product's largest
  terms), a third of the instructions a value.

It reads the planes of `quant_matmul` as they are (4-bit fields in words, u8 scales and
offsets, each super-block's fp16 d and -dmin), so prefill, the dequantiser and the reference
are unchanged. `quant_matmul.qgemv` and `qgemv_gated` hand it the Q4_K products `choose`
picks: those of the GPU's tuning table, which the sweep fills only where a tensor-core kernel
beat the Triton GEMV (on the H100 the i8 kernel on every Q4_K product of the 8B shape: gated
gate/up 2.67 TB/s against Triton's 2.10, Q+K+V 1.83 against 1.28). The f16 kernel's sums
are closer to exact (float32 products of ~33-bit activation parts: a few 1e-7 of the largest
output where the Triton GEMV's are ~2e-6). The
Triton GEMV stays the path for every other case: other formats, off sm_80+, without nvcc, and
under IMPDIFF_GEMV=triton (an A/B of the two, or a bisection of the engine's own kernels).

The i8 kernel can also end a one-token QKV projection as `norm_rope.rope_qkv` would go on
(`gemv_rope`: Q and K rotated, K and V written into the caches' row), the "rope" fusion.
"""

from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from . import cuda_driver
from .launch import pdl_enabled, sm_count, tuning_table

SOURCES = {"f16": Path(__file__).parent / "cuda" / "q4k_mma_gemv.cu",
           "i8": Path(__file__).parent / "cuda" / "kquant_imma_gemv.cu"}
# the formats each kind of operands multiplies
MULTIPLIES = {"f16": ("q4_k",), "i8": ("q4_k", "q6_k")}
KERNEL_ENV = "IMPDIFF_GEMV"
# {"q4_k gated 28672 4096": [warps, row_blocks, split_k(, k_warps(, operands))], ...}
TABLE_ENV = "IMPDIFF_MMA_TABLE"
F16_1024 = 0x64006400  # fp16 1024.0 in both halves
# a super-block's staged activation: f16, three parts' fragments + group sums + scale; i8, the
# B words (two bytes a value) + each group's scale and sum(s: Q6_K's groups of 16 two) + x as it
# is (copied in first)
SHARED_PER_TILE = {"f16": 8 * 4 * 3 * 16 + 8 * 4 + 4, "i8": 256 * 2 + 8 * 8 + 256 * 4,
                   "i8 q6_k": 256 * 2 + 8 * 16 + 256 * 4}
ROWS_PER_BLOCK = {"f16": 8, "i8": 16}  # weight rows of a row block (half as many outputs gated)
ACT_CODES = {None: 0, "silu": 1, "gelu_tanh": 2}
I8_LIMIT = 32639.0  # the i8 kernel's largest |x| / dx: 256 hi + lo with hi a byte


@dataclass(frozen=True)
class MmaConfig:
    warps: int  # warps a block, sharing one staged activation
    row_blocks: int  # row blocks (ROWS_PER_BLOCK weight rows) a warp computes side by side
    split_k: int  # blocks over K, their partial sums added by a second kernel
    k_warps: int = 1  # warps of a block sharing a task over K, added in shared memory
    operands: str = "f16"  # "f16" or "i8": which kernel (SOURCES)

    def fits(self, w, gated: bool) -> bool:
        """Whether the kernel covers `w`'s rows: the i8 kernel's last row block may overlap the
        one before it (and recompute its rows), the f16 kernel's must end at the last row."""
        if gated and self.split_k > 1:
            return False
        rows_out = w.n // 2 if gated else w.n
        block = ROWS_PER_BLOCK[self.operands] // (2 if gated else 1)
        return rows_out >= block if self.operands == "i8" else rows_out % block == 0

    def takes(self, x: torch.Tensor) -> bool:
        """The i8 kernel stages the activation in 16-byte loads."""
        return self.operands != "i8" or x.data_ptr() % 16 == 0


def i8_activation(x: torch.Tensor, group: int = 32) -> torch.Tensor:
    """x as the i8 kernel multiplies the fields of a format with groups of `group` values by
    it: per activation group of 32 values, dx * round(x / dx) with dx = max |x| / I8_LIMIT
    (float32 throughout, as the kernel). The activation groups are the weight's groups of 32,
    or, for groups of 16 (Q6_K), groups j and 8 + j of a super-block together."""
    paired = group == 16
    v = x.float().reshape(-1, 2, 8, 16).transpose(1, 2) if paired else x.float()
    groups = v.reshape(-1, 32)
    amax = groups.abs().amax(dim=1, keepdim=True)
    live = amax > 1e-30  # a group of (near) zeros stays zero
    # a true division, as the kernel's: torch's scalar / tensor multiplies by a reciprocal,
    # which rounds a quarter of the quotients differently and moves a value of x off its
    # half-way point now and then (one step of dx: ~1e-5 of a product)
    inv = torch.where(live, torch.full_like(amax, I8_LIMIT) / amax.clamp_min(1e-30), 0.0)
    dx = torch.where(live, amax / I8_LIMIT, 0.0)
    q = torch.round(groups * inv) * dx
    return (q.reshape(-1, 8, 2, 16).transpose(1, 2) if paired else q).reshape(x.shape)


def i8_reference(x: torch.Tensor, w) -> torch.Tensor:
    """The i8 kernel's product W x in float64: the scaled fields (d s q) times the 16-bit
    activation, Q4_K's offsets (-dmin m) times x itself (the kernel adds each group's float32
    sum), Q6_K's (-32 d s) times the 16-bit activation too."""
    from .quant_matmul import dequantize_reference  # (quant_matmul imports this module)
    full = dequantize_reference(w).double()
    x16 = i8_activation(x, w.fmt.group).double()
    if w.fmt.name == "q6_k":
        return full @ x16
    offsets = full - dequantize_reference(replace(w, b=torch.zeros_like(w.b))).double()
    return (full - offsets) @ x16 + offsets @ x.double()


def supported(x: torch.Tensor, w) -> bool:
    """Whether these kernels run `w` x: a Q4_K or Q6_K weight whose planes they can address,
    on a GPU of compute capability 8.0 or later with nvcc at hand."""
    if (w.fmt.name not in MULTIPLIES["i8"] or not x.is_cuda
            or os.environ.get(KERNEL_ENV) == "triton"):
        return False
    q6k = w.fmt.name == "q6_k"
    planes_ok = (w.k % 256 == 0 and w.q.shape[1] * w.fmt.fields == w.k and w.n % 8 == 0
                 and w.s.dtype == (torch.int8 if q6k else torch.uint8)
                 and (q6k or w.b.dtype == torch.uint8) and w.sd.dtype == torch.float16
                 and all(p.stride(1) == 1 for p in w.planes() if p is not None)
                 # rows read in 16-byte vectors
                 and all(p.data_ptr() % 16 == 0 for p in (w.q, w.h) if p is not None))
    return (planes_ok and x.dtype == torch.float32 and x.is_contiguous()
            and _capable(x.device))


@functools.cache
def _capable(device: torch.device) -> bool:
    return _capability(device)[0] >= 8 and cuda_driver.nvcc_path() is not None


def _capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device)


def build_args(device: torch.device, cfg: MmaConfig, act: int, pdl: bool,
               fmt: str = "q4_k", flags: frozenset[str] = frozenset(),
               min_blocks: int | None = None) -> tuple[Path, str, dict[str, int]]:
    """What `cuda_driver.compile_cubin` builds for `cfg` and format `fmt` on `device` (a sweep
    compiles many configs in parallel before it times them); `flags`: the i8 kernel's
    optional epilogue (ROPE: kquant_imma_gemv.cu), and `min_blocks` its register cap where it
    takes more registers than the plain kernel."""
    major, minor = _capability(device)
    return (SOURCES[cfg.operands], f"sm_{major}{minor}",
            defines(cfg, act, pdl, fmt, flags, min_blocks))


def defines(cfg: MmaConfig, act: int, pdl: bool, fmt: str = "q4_k",
            flags: frozenset[str] = frozenset(), min_blocks: int | None = None
            ) -> dict[str, int]:
    """The compile-time config of `cfg`'s kernel (`build_args`)."""
    out = dict(WARPS=cfg.warps, ROW_BLOCKS=cfg.row_blocks, KSPLIT=cfg.k_warps, PDL=int(pdl),
               ACT=act, **{flag: 1 for flag in flags})
    if fmt == "q6_k":
        out["Q6K"] = 1
    if min_blocks:
        out["MIN_BLOCKS"] = min_blocks
    return out


@functools.cache
def _kernel(device: torch.device, cfg: MmaConfig, act: int, pdl: bool, fmt: str = "q4_k",
            flags: frozenset[str] = frozenset(), min_blocks: int | None = None
            ) -> cuda_driver.Kernel:
    source, arch, macros = build_args(device, cfg, act, pdl, fmt, flags, min_blocks)
    return cuda_driver.Kernel(cuda_driver.compile_cubin(source, arch, macros), source.stem,
                              device)


def choose(x: torch.Tensor, w, act: str | None = None) -> MmaConfig | None:
    """The tensor-core config for W x (with `act`: the gated product), or None where the Triton
    GEMV runs it: the shapes of this GPU's table (tuning/<device name>.mma.json, written by
    benchmarks/gemv_sweep.py --kernel mma only where a tensor-core kernel was faster), else,
    with no table for the GPU, the gated gate/up product (the largest of a decode step) on the
    i8 kernel at its H100 config, four warps sharing each task two ways over K, and every
    Q6_K product on it at a config within 2% and 7% of the H100's best for the 8B shape's
    output and ffn_down (the Triton GEMV reads Q6_K's split planes at 0.72-0.86 of the i8
    kernel's speed: stop 22's sweep)."""
    gated = act is not None
    if not supported(x, w):
        return None
    table = tuning_table(TABLE_ENV, ".mma.json")
    if not table:
        cfg = (MmaConfig(4, 1, 1, 2, "i8") if gated and w.fmt.name == "q4_k"
               else MmaConfig(8, 1, 1, 4, "i8") if w.fmt.name == "q6_k" else None)
    else:
        tuned = table.get(table_key(w.fmt.name, gated, w.n, w.k))
        cfg = MmaConfig(*tuned) if tuned else None
    return (cfg if cfg and w.fmt.name in MULTIPLIES[cfg.operands] and cfg.fits(w, gated)
            and cfg.takes(x) and _builds(x.device, cfg, act, w.fmt.name) else None)


def table_key(fmt: str, gated: bool, n: int, k: int) -> str:
    return f"{fmt}{' gated' if gated else ''} {n} {k}"


@functools.cache
def _builds(device: torch.device, cfg: MmaConfig, act: str | None, fmt: str) -> bool:
    """Whether nvcc builds the kernel here; if not, one warning and the Triton GEMV (a toolkit
    too old for the GPU should cost speed, not the run)."""
    try:
        _kernel(device, cfg, ACT_CODES[act], pdl_enabled(device), fmt)
        return True
    except cuda_driver.CudaBuildError as exc:
        warnings.warn(f"the tensor-core GEMV did not build ({str(exc).splitlines()[-1]}); the "
                      f"Triton GEMV runs instead", stacklevel=2)
        return False


def gemv(x: torch.Tensor, w, config: MmaConfig, out: torch.Tensor | None = None,
         act: str | None = None) -> torch.Tensor:
    """W x for one token with `config` (`choose`'s, or a sweep's), x [k] float32 -> [n]
    float32; with `act`, W = [gate; up] and the result is act(gate) * up [n / 2]. A split K
    adds its partial sums in a fixed order."""
    return _launch(x, w, config, out, act)


@dataclass(frozen=True)
class RopeAfter:
    """Where the i8 kernel's ROPE epilogue puts one token's rows of a fused [Q; K; V]
    projection (as norm_rope.rope_qkv, llama's pairs 2i, 2i + 1): Q rotated into q (float32,
    q_rows values), K rotated and V as it is into row positions[0] of the fp16 caches [S,
    k_rows]; `row0`: the weight's first row in [Q; K; V] (Q+K and V may be two weights)."""

    positions: torch.Tensor  # int32 [1], on the device
    cos: torch.Tensor  # float32 [S, n_rot / 2]
    sin: torch.Tensor
    q: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    q_rows: int
    k_rows: int
    head_dim: int
    n_rot: int
    row0: int = 0


def takes_rope(config: MmaConfig, w, rope: RopeAfter) -> bool:
    """Whether `config`'s kernel can end W x with `rope`: the i8 kernel in one split, whole row
    blocks (a pair never straddles two), pairs at even rows."""
    caches = (rope.k_cache, rope.v_cache)
    return (config.operands == "i8" and config.split_k == 1 and w.n % 16 == 0
            and rope.row0 % 2 == 0 and rope.head_dim % 2 == 0 and rope.n_rot % 2 == 0
            and rope.row0 + w.n <= rope.q_rows + 2 * rope.k_rows
            and all(c.dtype == torch.float16 and c.is_contiguous()
                    and c[0].numel() == rope.k_rows for c in caches)
            and rope.q.dtype == torch.float32 and rope.q.is_contiguous()
            and rope.q.numel() == rope.q_rows and rope.positions.dtype == torch.int32
            and all(t.dtype == torch.float32 and t.is_contiguous()
                    and t.shape[1] == rope.n_rot // 2 for t in (rope.cos, rope.sin)))


def gemv_rope(x: torch.Tensor, w, config: MmaConfig, rope: RopeAfter) -> None:
    """W x for one token stored as `rope` says (`takes_rope`), in one launch."""
    assert takes_rope(config, w, rope), f"{config} ends with no RoPE over {w.n} rows"
    _launch(x, w, config, None, None, rope)


def _launch(x: torch.Tensor, w, cfg: MmaConfig, out, act,
            rope: RopeAfter | None = None) -> torch.Tensor | None:
    """One launch of `cfg`'s kernel: the product, or with `rope` its stores (ROPE) and None."""
    gated = act is not None
    assert cfg.fits(w, gated), f"{cfg} does not cover {w.n} rows{' gated' if gated else ''}"
    assert cfg.takes(x), f"{cfg} needs x at a 16-byte boundary"
    assert w.fmt.name in MULTIPLIES[cfg.operands], f"{cfg.operands} takes no {w.fmt.name}"
    assert cfg.operands == "i8" or not rope, "the f16 kernel has no RoPE epilogue"
    supers = w.k // 256
    per_split = -(-supers // cfg.split_k)
    splits = -(-supers // per_split)
    rows_out = w.n // 2 if gated else w.n
    block_rows = ROWS_PER_BLOCK[cfg.operands] // (2 if gated else 1)
    tasks = -(-rows_out // (block_rows * cfg.row_blocks))
    assert cfg.warps % cfg.k_warps == 0, "a block holds whole groups of k_warps"
    if rope:
        partial = rope.q  # (unwritten: the epilogue stores)
    elif out is None or splits > 1:
        partial = torch.empty((splits, rows_out), device=x.device, dtype=torch.float32)
    else:
        partial = out.view(1, rows_out)
    pdl = pdl_enabled(x.device)
    q6k = w.fmt.name == "q6_k"
    b = w.h if q6k else w.b  # the i8 kernel's third plane: Q4_K's offsets, or Q6_K's top bits
    threads = 32 * cfg.warps
    shared = per_split * SHARED_PER_TILE[cfg.operands + (" q6_k" if q6k else "")] + (
        cfg.warps * cfg.row_blocks * ROWS_PER_BLOCK[cfg.operands] * 4 if cfg.k_warps > 1 else 0)

    def grid(kernel) -> int:  # no more blocks than the SMs hold at once: the warps stride
        resident = kernel.blocks_per_sm(threads, shared) * sm_count(x.device)
        return max(1, min(-(-tasks // (cfg.warps // cfg.k_warps)), resident // splits))

    variant = functools.partial(_kernel, x.device, cfg, ACT_CODES[act], pdl, w.fmt.name)
    kernel = variant()
    if rope:
        # the epilogue may take registers enough to lose the plain kernel's grid (the one the
        # sweep timed): then its registers are capped to hold the plain kernel's blocks
        flags = frozenset({"ROPE"})
        plain, kernel = kernel, variant(flags)
        if grid(kernel) < grid(plain):
            kernel = variant(flags, plain.blocks_per_sm(threads, shared))
    strides = (w.q.stride(0), w.s.stride(0), b.stride(0), w.sd.stride(0) // 2, float(w.alpha))
    if cfg.operands == "f16":
        tail = (F16_1024,)
    else:  # ROPE's position, cos, sin, q, caches, first row, Q and K rows, head and rotated
        # dims, cache row length (without: any pointers, zeros)
        tail = ((rope.positions, rope.cos, rope.sin, rope.q, rope.k_cache, rope.v_cache,
                 rope.row0, rope.q_rows, rope.k_rows, rope.head_dim, rope.n_rot, rope.k_rows)
                if rope else (x, x, x, partial, partial, partial, 0, 0, 0, 0, 0, 0))
    kernel((grid(kernel), splits), threads, shared,
           torch.cuda.current_stream(x.device).cuda_stream,
           x, partial, w.q, w.s, b, w.sd, w.n, supers, per_split, *strides, *tail, pdl=pdl)
    if rope:
        return None
    if splits == 1:
        return partial.view(rows_out)
    return torch.sum(partial, dim=0, out=out)
