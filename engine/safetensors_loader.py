"""HF model directories (config.json + SafeTensors, single file or sharded) -> the engine's model.

The tensors are read with the `safetensors` package; before it sees a file, `read_header` makes
the checks it does not make itself and says what is wrong in one line naming the file and the
tensor: a key that appears twice in the header (safetensors keeps the last one silently), an empty
tensor name, a byte range that does not match shape × dtype, gaps, overlaps and bytes after the
last tensor, shard files that are missing or escape the directory, index entries pointing at the
wrong shard, weights holding NaN or Inf. Any `SafetensorError` that still comes through is turned
into a `ModelLoadError` naming the file.

HF names are mapped to the engine's GGUF-style names (the inverse of
`impdiff.testing.synthetic.write_hf_dir`): Llama's Q/K rows are re-permuted for the engine's
adjacent-pair rope, Gemma's RMS-norm weights get their +1, Llama-3 rope scaling becomes the
`rope_freqs.weight` factor table, and NVFP4 weights (both layouts, see `engine.nvfp4`) are
dequantised. Every guard that fires is counted in `LoadStats`, returned with the model and printed
by the command line as one summary line.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from . import nvfp4
from .errors import ModelLoadError
from .faults import FaultSet
from .hf_config import (ConfigWarning, HFModelInfo, analyze_config, check_tensors, read_json,
                        require_loadable, sentencepiece_message)
from .loader import LoadedModel, _transpose_tile, resolve_device
from .model import Transformer, expected_shapes

_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]")


def one_line(fn):
    """ModelLoadErrors leave `fn` as one line: control characters in tensor names or paths taken
    from a file (a newline in a JSON key, say) are escaped."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ModelLoadError as exc:
            msg = str(exc)
            if _CONTROL.search(msg):
                clean = _CONTROL.sub(lambda m: repr(m.group())[1:-1], msg)
                raise type(exc)(clean) from None
            raise
    return wrapper


MAX_HEADER_BYTES = 100_000_000  # the safetensors package's own cap
DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64", "F8_E4M3", "F8_E5M2")
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"

HF_LAYER_NAMES = {
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}
GEMMA_LAYER_NAMES = {"pre_feedforward_layernorm": "ffn_norm",
                     "post_attention_layernorm": "post_attention_norm",
                     "post_feedforward_layernorm": "post_ffw_norm"}
OTHER_LAYER_NAMES = {"post_attention_layernorm": "ffn_norm"}
LINEAR_KINDS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
KV_SCALE_SUFFIXES = (".k_scale", ".v_scale", ".k_proj.output_scale", ".v_proj.output_scale")


# --------------------------------------------------------------------------------------------
# counters
# --------------------------------------------------------------------------------------------

@dataclass
class LoadStats:
    """What happened while loading, as counts; `summary_line` prints them in one line."""

    format: str = ""  # e.g. "safetensors BF16", "NVFP4 (compressed-tensors)", "gguf Q4_K_M"
    files: int = 0
    tensors: int = 0
    bytes: int = 0
    dtypes: Counter = field(default_factory=Counter)
    nvfp4_weights: int = 0
    zero_global_scale: int = 0
    nonfinite_global_scale: int = 0
    negative_global_scale: int = 0
    nonfinite_block_scales: int = 0
    negative_block_scales: int = 0
    input_scale_unused: int = 0
    kv_scales_unused: int = 0
    fp8_plain_weights: int = 0
    skipped_tensors: int = 0  # vision tower and other parts of the checkpoint the engine skips
    ignored_tensors: int = 0  # tensors nothing maps to (each reported)
    unlisted_in_index: int = 0
    warnings: list[ConfigWarning] = field(default_factory=list)

    def event(self, code: str, message: str, level: str = "warning") -> None:
        if hasattr(self, code) and isinstance(getattr(self, code), int):
            setattr(self, code, getattr(self, code) + 1)
        self.warnings.append(ConfigWarning(code, message, level))

    def summary_line(self) -> str:
        types = ", ".join(f"{k}×{v}" for k, v in sorted(self.dtypes.items()))
        parts = [f"load: {self.format or 'model'}: {self.files} file(s), {self.tensors} "
                 f"tensors ({self.bytes / 1e6:.1f} MB; {types})"]
        if self.nvfp4_weights or self.zero_global_scale or self.nonfinite_global_scale:
            parts.append(f"nvfp4: {self.nvfp4_weights} weights dequantised, "
                         f"{self.zero_global_scale} zero / {self.nonfinite_global_scale} "
                         f"non-finite / {self.negative_global_scale} negative global scales "
                         f"(set to 0 / 0 / kept), {self.nonfinite_block_scales} NaN block "
                         f"scales zeroed, {self.negative_block_scales} negative block scales, "
                         f"{self.input_scale_unused} input scales loaded but unused")
        if self.kv_scales_unused:
            parts.append(f"{self.kv_scales_unused} KV-cache scales unused")
        if self.fp8_plain_weights:
            parts.append(f"{self.fp8_plain_weights} FP8 weights without scales taken as stored")
        parts.append(f"{self.skipped_tensors} skipped, {self.ignored_tensors} ignored tensors")
        if self.unlisted_in_index:
            parts.append(f"{self.unlisted_in_index} tensors in shards but not in the index")
        n_warn = sum(1 for w in self.warnings if w.level == "warning")
        parts.append(f"{n_warn} warning(s)")
        return "; ".join(parts)


# --------------------------------------------------------------------------------------------
# one file's header
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # offsets relative to the data section
    end: int
    file: Path

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass
class SafetensorsFile:
    path: Path
    header_len: int
    entries: dict[str, TensorEntry]
    metadata: dict[str, str]


def _dup_hook(path: Path):
    def hook(pairs):
        out = {}
        for k, v in pairs:
            if k in out:
                raise ModelLoadError(f"{path}: header lists tensor '{k}' twice (safetensors "
                                     "would silently keep the second entry)")
            out[k] = v
        return out
    return hook


@one_line
def read_header(path: str | Path) -> SafetensorsFile:
    """Parse and validate one .safetensors header; every problem is one ModelLoadError line."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if size < 8 or len(head) < 8:
                raise ModelLoadError(f"{path}: {size} bytes, too short for the 8-byte header "
                                     "length (truncated or not a safetensors file)")
            n = int.from_bytes(head, "little")
            if n > MAX_HEADER_BYTES:
                raise ModelLoadError(f"{path}: header length {n} exceeds the {MAX_HEADER_BYTES} "
                                     "byte limit (corrupt length field)")
            if n > size - 8:
                raise ModelLoadError(f"{path}: header length {n} runs past the end of the "
                                     f"{size}-byte file (truncated or corrupt)")
            if n < 2:
                raise ModelLoadError(f"{path}: header length {n} is too short for a JSON object")
            raw = f.read(n)
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: file is missing") from None
    except IsADirectoryError:
        raise ModelLoadError(f"{path}: is a directory, expected a .safetensors file") from None
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ModelLoadError(f"{path}: header is not UTF-8 (byte {exc.start})") from None
    try:
        header = json.loads(text, object_pairs_hook=_dup_hook(path))
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{path}: header is not valid JSON ({exc.msg} at column "
                             f"{exc.colno})") from None
    except RecursionError:
        raise ModelLoadError(f"{path}: header JSON is nested too deeply") from None
    if not isinstance(header, dict):
        raise ModelLoadError(f"{path}: header must be a JSON object of tensors")
    data_size = size - 8 - n
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ModelLoadError(f"{path}: __metadata__ must map strings to strings")
    entries: dict[str, TensorEntry] = {}
    for name, e in header.items():
        entries[name] = _entry(path, name, e, data_size)
    _check_coverage(path, entries, data_size)
    return SafetensorsFile(path, n, entries, metadata)


def _entry(path: Path, name: str, e: Any, data_size: int) -> TensorEntry:
    where = f"{path}: tensor '{name}'"
    if not name:
        raise ModelLoadError(f"{path}: a tensor has an empty name")
    if not isinstance(e, dict):
        raise ModelLoadError(f"{where}: entry must be an object with dtype, shape, data_offsets")
    dtype, shape, offs = e.get("dtype"), e.get("shape"), e.get("data_offsets")
    if not isinstance(dtype, str):
        raise ModelLoadError(f"{where}: missing or non-string 'dtype'")
    if dtype not in DTYPE_SIZES:
        raise ModelLoadError(f"{where}: dtype '{dtype}' is not supported (supported: "
                             f"{', '.join(DTYPE_SIZES)})")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool)
                                              and d >= 0 for d in shape):
        raise ModelLoadError(f"{where}: 'shape' must be a list of non-negative integers, got "
                             f"{json.dumps(shape)[:60]}")
    if len(shape) > 8:
        raise ModelLoadError(f"{where}: {len(shape)} dimensions (at most 8 are supported)")
    if (not isinstance(offs, list) or len(offs) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offs)):
        raise ModelLoadError(f"{where}: 'data_offsets' must be [start, end] of non-negative "
                             f"integers, got {json.dumps(offs)[:60]}")
    start, end = offs
    if start > end:
        raise ModelLoadError(f"{where}: data_offsets [{start}, {end}] are swapped (start after "
                             "end)")
    if end > data_size:
        raise ModelLoadError(f"{where}: data_offsets end {end} is past the data section "
                             f"({data_size} bytes; file truncated?)")
    numel = math.prod(shape)
    want = numel * DTYPE_SIZES[dtype]
    if end - start != want:
        raise ModelLoadError(f"{where}: holds {end - start} bytes, but shape {shape} × {dtype} "
                             f"needs {want}")
    return TensorEntry(name, dtype, tuple(shape), start, end, path)


def _check_coverage(path: Path, entries: dict[str, TensorEntry], data_size: int) -> None:
    pos, prev = 0, None
    for e in sorted(entries.values(), key=lambda e: (e.start, e.end)):
        if e.start < pos:
            raise ModelLoadError(f"{path}: tensor '{e.name}' (bytes {e.start}..{e.end}) overlaps "
                                 f"'{prev}' (ends at {pos})")
        if e.start > pos:
            raise ModelLoadError(f"{path}: {e.start - pos} unused bytes before tensor "
                                 f"'{e.name}' (offset {pos}); the data section has gaps")
        pos, prev = e.end, e.name
    if pos != data_size:
        raise ModelLoadError(f"{path}: {data_size - pos} bytes after the last tensor; the header "
                             "does not describe the whole file")


# --------------------------------------------------------------------------------------------
# a directory: files, index, tensors
# --------------------------------------------------------------------------------------------

@dataclass
class Checkpoint:
    """Every tensor of a directory: name -> entry (which file, where)."""

    directory: Path
    files: list[SafetensorsFile]
    entries: dict[str, TensorEntry]
    warnings: list[ConfigWarning] = field(default_factory=list)
    unlisted: int = 0

    def read(self, name: str) -> torch.Tensor:
        from safetensors import SafetensorError, safe_open

        e = self.entries[name]
        try:
            with safe_open(str(e.file), framework="pt") as f:
                t = f.get_tensor(name)
        except SafetensorError as exc:
            raise ModelLoadError(f"{e.file}: tensor '{name}': {exc}") from None
        except (OSError, RuntimeError, ValueError) as exc:
            raise ModelLoadError(f"{e.file}: tensor '{name}': cannot read ({exc})") from None
        if tuple(t.shape) != e.shape:
            raise ModelLoadError(f"{e.file}: tensor '{name}' read as shape {list(t.shape)}, "
                                 f"header says {list(e.shape)}")
        return t

    def read_all(self) -> dict[str, torch.Tensor]:
        """Every tensor, one safe_open per file."""
        from safetensors import SafetensorError, safe_open

        out: dict[str, torch.Tensor] = {}
        by_file: dict[Path, list[str]] = {}
        for name, e in self.entries.items():
            by_file.setdefault(e.file, []).append(name)
        for path, names in by_file.items():
            name = None
            try:
                with safe_open(str(path), framework="pt") as f:
                    for name in names:
                        out[name] = f.get_tensor(name)
            except SafetensorError as exc:
                what = f"tensor '{name}': " if name else ""
                raise ModelLoadError(f"{path}: {what}{exc}") from None
            except (OSError, RuntimeError, ValueError) as exc:
                raise ModelLoadError(f"{path}: tensor '{name}': cannot read ({exc})") from None
            for name in names:
                if tuple(out[name].shape) != self.entries[name].shape:
                    raise ModelLoadError(f"{path}: tensor '{name}' read as shape "
                                         f"{list(out[name].shape)}, header says "
                                         f"{list(self.entries[name].shape)}")
        return out


@one_line
def open_checkpoint(directory: str | Path) -> Checkpoint:
    d = Path(directory)
    if not d.is_dir():
        raise ModelLoadError(f"{d}: not a directory")
    index = d / INDEX_NAME
    if index.exists():
        return _open_sharded(d, index)
    single = d / SINGLE_NAME
    if single.exists():
        f = read_header(single)
        return Checkpoint(d, [f], dict(f.entries))
    others = sorted(p for p in d.glob("*.safetensors"))
    if len(others) == 1:
        f = read_header(others[0])
        return Checkpoint(d, [f], dict(f.entries))
    if others:
        raise ModelLoadError(f"{d}: {len(others)} .safetensors files but no {INDEX_NAME} to say "
                             "which tensor is in which")
    raise ModelLoadError(f"{d}: no {SINGLE_NAME} and no {INDEX_NAME}")


def _open_sharded(d: Path, index: Path) -> Checkpoint:
    idx = read_json(index)
    wm = idx.get("weight_map") if isinstance(idx, dict) else None
    if not isinstance(wm, dict) or not wm:
        raise ModelLoadError(f"{index}: 'weight_map' must be a non-empty object of tensor -> "
                             "shard file")
    shards: dict[str, list[str]] = {}
    for name, shard in wm.items():
        if not isinstance(shard, str) or not shard:
            raise ModelLoadError(f"{index}: weight_map['{name}'] must be a file name, got "
                                 f"{json.dumps(shard)[:60]}")
        if "/" in shard or "\\" in shard or shard in (".", "..") or os.path.isabs(shard):
            raise ModelLoadError(f"{index}: weight_map['{name}'] = '{shard}' is not a plain file "
                                 "name in the model directory")
        shards.setdefault(shard, []).append(name)
    files, entries, warnings, unlisted = [], {}, [], 0
    seen_in: dict[str, Path] = {}
    for shard, names in shards.items():
        p = d / shard
        if not p.exists():
            raise ModelLoadError(f"{p}: shard is missing (the index maps {len(names)} tensors to "
                                 f"it, e.g. '{names[0]}')")
        f = read_header(p)
        files.append(f)
        for name in names:
            if name not in f.entries:
                raise ModelLoadError(f"{index}: maps tensor '{name}' to {shard}, which does not "
                                     "contain it")
            entries[name] = f.entries[name]
        for name in f.entries:
            if name in seen_in:
                warnings.append(ConfigWarning("duplicate-across-shards",
                                              f"{p}: tensor '{name}' also in {seen_in[name].name}; "
                                              f"the index's choice ({wm.get(name)}) is used"))
            seen_in[name] = p
            if name not in wm:
                unlisted += 1
    if unlisted:
        warnings.append(ConfigWarning("index-unlisted", f"{index}: {unlisted} tensor(s) in the "
                                      "shards are not in weight_map and are not loaded"))
    total = (idx.get("metadata") or {}).get("total_size") if isinstance(idx.get("metadata"),
                                                                          dict) else None
    actual = sum(e.nbytes for e in entries.values())
    if isinstance(total, int) and total != actual:
        warnings.append(ConfigWarning("index-total-size", f"{index}: metadata.total_size {total} "
                                      f"differs from the listed tensors' {actual} bytes", "info"))
    return Checkpoint(d, files, entries, warnings, unlisted)


# --------------------------------------------------------------------------------------------
# HF names -> engine names
# --------------------------------------------------------------------------------------------

def split_hf_name(name: str, info: HFModelInfo) -> tuple[str, str] | None:
    """'model.layers.3.self_attn.q_proj.weight_scale' -> ('blk.3.attn_q', 'weight_scale').

    None for names that are not part of the language model.
    """
    module, _, suffix = name.rpartition(".")
    if name in info.lm_head_names or module + ".weight" in info.lm_head_names:
        return "output", suffix
    for prefix in info.text_prefixes:
        if module.startswith(prefix):
            rest = module[len(prefix):]
            break
    else:
        return None
    if rest == "embed_tokens":
        return "token_embd", suffix
    if rest == "norm":
        return "output_norm", suffix
    parts = rest.split(".", 2)
    if len(parts) == 3 and parts[0] == "layers" and parts[1].isdigit():
        kind = parts[2]
        table = GEMMA_LAYER_NAMES if info.arch == "gemma3" else OTHER_LAYER_NAMES
        g = HF_LAYER_NAMES.get(kind) or table.get(kind)
        if g is not None:
            return f"blk.{int(parts[1])}.{g}", suffix
    return None


def permute_llama_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """convert_hf_to_gguf's permute: HF's rotate-half rows -> adjacent-pair rope rows."""
    rows = w.shape[0]
    return (w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2)
            .reshape(w.shape))


def unpermute_llama_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    rows = w.shape[0]
    return (w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2)
            .reshape(w.shape))


def _to_float(name: str, t: torch.Tensor, dtype: str, where: Path, stats: LoadStats
              ) -> torch.Tensor:
    if dtype not in FLOAT_DTYPES:
        raise ModelLoadError(f"{where}: tensor '{name}' has dtype {dtype}, which is no weight "
                             "format (U8 weights need an NVFP4 quantization config)")
    if dtype in ("F8_E4M3", "F8_E5M2"):
        stats.fp8_plain_weights += 1
    w = t.to(torch.float32)
    if not all_finite(w):
        bad = int((~torch.isfinite(w)).sum())
        raise ModelLoadError(f"{where}: tensor '{name}' holds {bad} NaN/Inf values "
                             f"(of {w.numel()})")
    return w


def all_finite(w: torch.Tensor) -> bool:
    """No NaN or Inf, in two reductions (max and min propagate NaN) instead of a mask."""
    if w.numel() == 0:
        return True
    lo, hi = torch.aminmax(w)
    return bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))


@dataclass
class HFLoadedModel(LoadedModel):
    directory: Path | None = None
    info: HFModelInfo | None = None
    stats: LoadStats | None = None
    warnings: list[ConfigWarning] = field(default_factory=list)

    @cached_property
    def tokenizer(self):
        return load_hf_tokenizer(self.directory, self.cfg.n_vocab, self.info)


@one_line
def load_hf_tokenizer(directory: Path, n_vocab: int, info: HFModelInfo | None = None):
    d = Path(directory)
    src = d / "impdiff_source.json"
    if not (d / "tokenizer.json").exists() and src.exists():
        from .gguf_file import GGUFFile
        from .tokenizer import Tokenizer

        meta = read_json(src)
        gguf_path = Path(meta.get("gguf", "")) if isinstance(meta, dict) else Path()
        if not gguf_path.is_file():
            raise ModelLoadError(f"{src}: the tokenizer comes from the GGUF it names "
                                 f"({gguf_path}), which does not exist")
        return Tokenizer.from_gguf(GGUFFile(gguf_path))
    if not (d / "tokenizer.json").exists() and (d / "tokenizer.model").exists():
        raise ModelLoadError(sentencepiece_message(str(d)))
    from .hf_tokenizer import HFTokenizer

    return HFTokenizer.from_dir(d, n_vocab, info)


@one_line
def load_hf_model(directory: str | Path, device: str | None = "auto",
                  faults: FaultSet = FaultSet(), dtype: torch.dtype = torch.float32
                  ) -> HFLoadedModel:
    d = Path(directory)
    if not d.is_dir():
        raise ModelLoadError(f"{d}: not a directory")
    config_path = d / "config.json"
    if not config_path.exists():
        raise ModelLoadError(f"{d}: no config.json (an HF model directory needs config.json and "
                             "model.safetensors or model.safetensors.index.json)")
    config = read_json(config_path)
    names = {p.name for p in d.iterdir()}
    quant_files = {}
    for qf in ("hf_quant_config.json", "quantize_config.json", "quant_config.json"):
        if qf in names:
            quant_files[qf] = read_json(d / qf)
    info = analyze_config(config, str(config_path), files=names, quant_files=quant_files)
    ckpt = open_checkpoint(d)
    check_tensors(info, set(ckpt.entries), str(d))
    cfg = require_loadable(info, str(config_path))
    dev = resolve_device(device)

    stats = LoadStats(files=len(ckpt.files), tensors=len(ckpt.entries),
                      bytes=sum(e.nbytes for e in ckpt.entries.values()),
                      unlisted_in_index=ckpt.unlisted)
    stats.dtypes.update(e.dtype for e in ckpt.entries.values())
    stats.warnings.extend(info.warnings)
    stats.warnings.extend(ckpt.warnings)

    raw = ckpt.read_all()
    weights = build_weights(raw, ckpt, info, cfg, stats)
    for k in list(weights):
        weights[k] = weights[k].to(device=dev, dtype=dtype)
    for layer in faults.layers_for("transposed-block", cfg.n_layer):
        weights[f"blk.{layer}.attn_output.weight"] = _transpose_tile(
            weights[f"blk.{layer}.attn_output.weight"])
    for required in ("token_embd.weight", "output_norm.weight"):
        if required not in weights:
            raise ModelLoadError(f"{d}: tensor for '{required}' is missing (HF name "
                                 f"{_hf_name_hint(required, info)})")
    q = info.quant
    if q.method == "nvfp4":
        stats.format = f"NVFP4 ({q.layout})"
    else:
        main = Counter(e.dtype for n, e in ckpt.entries.items() if e.dtype in FLOAT_DTYPES
                       and len(e.shape) == 2)
        stats.format = f"safetensors {main.most_common(1)[0][0]}" if main else "safetensors"
    model = Transformer(cfg, weights, faults, source=str(d))
    return HFLoadedModel(d, None, cfg, model, directory=d, info=info, stats=stats,
                         warnings=list(stats.warnings))


def _hf_name_hint(gguf_name: str, info: HFModelInfo) -> str:
    p = info.text_prefixes[0]
    return {"token_embd.weight": f"'{p}embed_tokens.weight'",
            "output_norm.weight": f"'{p}norm.weight'"}.get(gguf_name, "?")


def build_weights(raw: dict[str, torch.Tensor], ckpt: Checkpoint, info: HFModelInfo, cfg,
                  stats: LoadStats) -> dict[str, torch.Tensor]:
    """HF-named tensors -> engine-named float32 weights, with every check and transform."""
    modules: dict[str, dict[str, str]] = {}  # engine module -> suffix -> HF name
    leftovers: list[str] = []
    for name in raw:
        split = split_hf_name(name, info)
        if split is None:
            leftovers.append(name)
            continue
        module, suffix = split
        modules.setdefault(module, {})[suffix] = name

    q = info.quant
    shapes = {i: expected_shapes(cfg, i) for i in range(cfg.n_layer)}
    gemma = cfg.arch == "gemma3"
    weights: dict[str, torch.Tensor] = {}
    input_unused = 0
    for module, parts in modules.items():
        kind = module.split(".")[2] if module.startswith("blk.") else module
        if module == "output" and info.tie_effective:
            continue  # tie_word_embeddings: the warning is in info.warnings
        if kind in ("token_embd", "output"):
            expected = (cfg.n_vocab, cfg.n_embd)
        elif kind == "output_norm":
            expected = (cfg.n_embd,)
        else:
            layer = int(module.split(".")[1]) if module.startswith("blk.") else -1
            if not 0 <= layer < cfg.n_layer:
                raise ModelLoadError(f"{ckpt.directory}: '{next(iter(parts.values()))}' is for "
                                     f"layer {layer}, but config.json has {cfg.n_layer} layers")
            expected = shapes[layer].get(kind)
        is_linear = kind in LINEAR_KINDS or kind == "output"
        nv = _nvfp4_parts(parts, raw, q, is_linear)
        if nv is not None:
            w = _load_nvfp4(module, parts, raw, ckpt, q.layout, expected, stats)
            if q.layout and nvfp4.TENSOR_NAMES[q.layout]["input"] in parts:
                input_unused += 1
                _check_input_scale(parts[nvfp4.TENSOR_NAMES[q.layout]["input"]], raw, ckpt)
        else:
            if "weight" not in parts:
                names = ", ".join(sorted(parts.values()))
                raise ModelLoadError(f"{ckpt.directory}: {names} without a '.weight' tensor "
                                     "(incomplete or quantised in a layout the engine does not "
                                     "know)")
            hf = parts["weight"]
            e = ckpt.entries[hf]
            w = _to_float(hf, raw[hf], e.dtype, e.file, stats)
            if expected is not None and tuple(w.shape) != tuple(expected):
                raise ModelLoadError(f"{e.file}: tensor '{hf}' has shape {list(w.shape)}, "
                                     f"expected {list(expected)} from config.json")
            extra = sorted(set(parts) - {"weight", "bias"})
            quant_like = [s for s in extra if s in ("weight_scale", "weight_scale_2",
                                                    "weight_packed", "qweight", "scales",
                                                    "qzeros", "g_idx", "weight_global_scale")]
            if quant_like:
                raise ModelLoadError(f"{ckpt.directory}: '{parts[quant_like[0]]}' belongs to a "
                                     "quantised weight, but config.json declares no quantisation "
                                     "the engine can apply to it")
            for s in extra:
                if s.endswith(("input_scale", "input_global_scale")):
                    continue
                leftovers.append(parts[s])
        if gemma and kind.endswith("norm"):
            w = w + 1.0  # HF Gemma norms hold w, the engine (like GGUF) 1 + w
        if cfg.arch == "llama" and kind in ("attn_q", "attn_k"):
            w = permute_llama_qk(w, cfg.n_head if kind == "attn_q" else cfg.n_head_kv)
        weights[f"{module}.weight"] = w
    if input_unused:
        stats.input_scale_unused = input_unused
        stats.warnings.append(ConfigWarning(
            "input_scale_unused", f"{ckpt.directory}: {input_unused} NVFP4 weights carry an "
            "activation scale (input_scale / input_global_scale): loaded and checked, but unused "
            "(the engine dequantises weights and keeps activations in float32)", "info"))
    if info.rope_freqs is not None:
        weights["rope_freqs.weight"] = torch.tensor(info.rope_freqs, dtype=torch.float32)

    ignored = []
    for name in leftovers:
        if name.endswith(IGNORED_SUFFIXES):
            continue
        if name.startswith(info.skip_prefixes):
            stats.skipped_tensors += 1
            continue
        if name.endswith(KV_SCALE_SUFFIXES):
            stats.kv_scales_unused += 1
            continue
        if name.endswith(".bias"):
            continue  # check_tensors made that a blocking reason already
        ignored.append(name)
    if ignored:
        stats.ignored_tensors = len(ignored)
        stats.warnings.append(ConfigWarning(
            "unused-tensor", f"{ckpt.directory}: {len(ignored)} tensor(s) map to nothing in a "
            f"{cfg.arch} model and are ignored: {', '.join(ignored[:3])}"
            + (" ..." if len(ignored) > 3 else "")))
    if stats.kv_scales_unused:
        stats.warnings.append(ConfigWarning(
            "kv_scales_unused", f"{ckpt.directory}: {stats.kv_scales_unused} KV-cache scale "
            "tensors are unused (the engine's KV cache is float32)", "info"))
    return weights


def _nvfp4_parts(parts: dict[str, str], raw: dict[str, torch.Tensor], q, is_linear: bool
                 ) -> bool | None:
    if q.method != "nvfp4" or not is_linear:
        return None
    names = nvfp4.TENSOR_NAMES[q.layout]
    if q.layout == "compressed-tensors":
        return True if names["packed"] in parts else None
    # ModelOpt keeps the name 'weight': U8 (or a block scale next to it) means NVFP4
    if "weight" in parts and (raw[parts["weight"]].dtype == torch.uint8
                              or "weight_scale" in parts):
        return True
    return None


def _load_nvfp4(module: str, parts: dict[str, str], raw: dict[str, torch.Tensor],
                ckpt: Checkpoint, layout: str, expected, stats: LoadStats) -> torch.Tensor:
    names = nvfp4.TENSOR_NAMES[layout]
    base = parts.get(names["packed"], module)
    missing = [names[k] for k in ("packed", "scale", "global") if names[k] not in parts]
    if missing:
        prefix = base.rpartition(".")[0]
        raise ModelLoadError(f"{ckpt.directory}: NVFP4 ({layout}) weight '{prefix}' lacks "
                             f"{', '.join(prefix + '.' + m for m in missing)}")
    hp, hs, hg = (parts[names[k]] for k in ("packed", "scale", "global"))
    packed, scale, glob = raw[hp], raw[hs], raw[hg]
    where = f"{ckpt.entries[hp].file}: '{hp.rpartition('.')[0]}'"
    nvfp4.check_dtypes(where, packed, scale)
    nvfp4.check_shapes(where, packed.shape, scale.shape, expected)
    mult = nvfp4.tensor_multiplier(f"{ckpt.entries[hg].file}: '{hg}'",
                                   nvfp4.scalar_value(f"{ckpt.entries[hg].file}: '{hg}'", glob),
                                   layout, stats.event)
    w = nvfp4.dequantize(packed, scale, mult, where, stats.event)
    if not all_finite(w):
        bad = ~torch.isfinite(w)
        raise ModelLoadError(f"{where}: dequantises to {int(bad.sum())} non-finite values "
                             f"(block scale × tensor scale {mult:g} overflows float32)")
    stats.nvfp4_weights += 1
    return w


def _check_input_scale(name: str, raw: dict[str, torch.Tensor], ckpt: Checkpoint) -> None:
    t = raw[name]
    where = f"{ckpt.entries[name].file}: '{name}'"
    if t.numel() != 1 or not t.dtype.is_floating_point:
        raise ModelLoadError(f"{where}: activation scale must be one float, got "
                             f"{list(t.shape)} {t.dtype}")
