"""GGUF file -> config, dequantised weights on a device, tokenizer."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

from .config import ModelConfig, config_from_gguf
from .errors import ModelLoadError
from .faults import FaultSet
from .gguf_file import GGUFFile
from .model import Transformer, expected_shapes
from .quants import dequantize, type_name

TRANSPOSED_TILE = 256  # QK_K: the width of one K-quant super-block


def resolve_device(device: str | None) -> torch.device:
    """'auto' (or None) picks CUDA when present, else the CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"--device {device}: CUDA is not available on this machine")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ModelLoadError(f"--device: '{device}' is not a device (expected cpu, cuda, auto)") \
            from None


@dataclass
class LoadedModel:
    path: Path
    gguf: GGUFFile
    cfg: ModelConfig
    model: Transformer

    @cached_property
    def tokenizer(self):
        from .tokenizer import Tokenizer

        return Tokenizer.from_gguf(self.gguf)


def load_gguf_model(path: str | Path, device: str | None = "auto",
                    faults: FaultSet = FaultSet(), dtype: torch.dtype = torch.float32
                    ) -> LoadedModel:
    gf = GGUFFile(path)
    cfg = config_from_gguf(gf)
    dev = resolve_device(device)
    shapes = expected_shapes(cfg)
    weights = {}
    for name, raw in gf.tensors.items():
        _check_shape(gf, cfg, name, raw.shape, shapes)
        try:
            w = dequantize(raw.data, raw.qtype, raw.shape)
        except ModelLoadError as exc:
            raise ModelLoadError(f"{gf.path}: tensor '{name}': {exc}") from None
        weights[name] = w.to(device=dev, dtype=dtype)
    for layer in faults.layers_for("transposed-block", cfg.n_layer):
        weights[f"blk.{layer}.attn_output.weight"] = _transpose_tile(
            weights[f"blk.{layer}.attn_output.weight"])
    for required in ("token_embd.weight", "output_norm.weight"):
        if required not in weights:
            raise ModelLoadError(f"{gf.path}: tensor '{required}' is missing")
    model = Transformer(cfg, weights, faults, source=str(gf.path))
    return LoadedModel(gf.path, gf, cfg, model)


def is_hf_path(path: str | Path) -> bool:
    """An HF model directory, or a file inside one (config.json, *.safetensors, the index)."""
    p = Path(path)
    return p.is_dir() or p.suffix == ".safetensors" or p.name == "config.json" \
        or p.name.endswith(".safetensors.index.json")


def load_model(path: str | Path, device: str | None = "auto", faults: FaultSet = FaultSet(),
               dtype: torch.dtype = torch.float32) -> LoadedModel:
    """A GGUF file or an HF directory (config.json + SafeTensors), whichever `path` is.

    HF loads return an `HFLoadedModel` (engine.safetensors_loader) that also carries the config
    warnings and the load counters (`.stats.summary_line()`).
    """
    p = Path(path)
    if is_hf_path(p):
        from .safetensors_loader import load_hf_model

        return load_hf_model(p if p.is_dir() else p.parent, device, faults, dtype)
    return load_gguf_model(p, device, faults, dtype)


def _check_shape(gf: GGUFFile, cfg: ModelConfig, name: str, shape: tuple[int, ...],
                 shapes: dict[str, tuple[int, ...]]) -> None:
    parts = name.split(".")
    if parts[0] == "blk" and len(parts) == 4 and parts[3] == "weight" and parts[1].isdigit() \
            and int(parts[1]) < cfg.n_layer \
            and parts[2] in (shapes := expected_shapes(cfg, int(parts[1]))):  # per-layer shapes
        expected = shapes[parts[2]]
    elif name in ("token_embd.weight", "output.weight"):
        expected = (cfg.n_vocab, cfg.n_embd)
    else:
        return
    if tuple(shape) != expected:
        raise ModelLoadError(f"{gf.path}: tensor '{name}' has shape {list(shape)}, expected "
                             f"{list(expected)} from the metadata")


def _transpose_tile(w: torch.Tensor) -> torch.Tensor:
    """The `transposed-block` fault: a loader that lays one quant block's tile out transposed."""
    w = w.clone()
    t = TRANSPOSED_TILE
    w[:t, :t] = w[:t, :t].T.clone()
    return w


def describe_types(gf: GGUFFile) -> dict[str, int]:
    """How many tensors of each storage type the file holds (for `impdiff models`)."""
    counts: dict[str, int] = {}
    for raw in gf.tensors.values():
        counts[type_name(raw.qtype)] = counts.get(type_name(raw.qtype), 0) + 1
    return counts
