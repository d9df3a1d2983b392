"""HF transformers as an impdiff runtime (`transformers:MODEL`), taps from module hooks.

The model is loaded by transformers itself: from a GGUF file (`gguf_file=`, transformers
dequantises it to float32; llama, qwen3 and gemma3 are among the architectures it reads) or from
an HF directory (`config.json` + safetensors). Nothing of the engine is used, so this is an
independent third implementation of the same weights.

Which HF module is which canonical tap (`impdiff.taps`) is data: `HOOK_TABLES` holds, per model
family, rules `module path pattern -> canonical tap` plus how to read the tensor (the module's
output or its input) and how to convert its layout (`[batch, token, ...]` or `[batch, head,
token, dim]` to the canonical `[token, ...]`). Post-rope Q/K and the per-head attention result
are not the output of any module (rope is a function call inside the attention module); they
are read at the attention function, which this runtime registers with transformers as
`impdiff_sdpa` (transformers' own SDPA attention with a recording wrapper): the rules name them
`attn.q`, `attn.k` and `attn.out` of the attention module.

HF llama keeps Q/K rows in HF order (rope pairs (i, i + d/2)); llama.cpp's GGUF rows are
permuted by the converter to adjacent pairs (2i, 2i + 1), and the canonical Q/K taps follow the
GGUF. The `gguf_qk` conversion applies the converter's permutation to each head of the llama
Q/K taps so that they compare (qwen3 and gemma3 use NEOX rope on both sides: no permutation).

Incremental evaluation keeps a transformers cache (`DynamicCache`) across `eval` calls, with
explicit position ids, so the positions continue as the `Runtime` contract says.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..engine.errors import ModelLoadError
from ..taps import GLOBAL_LAYER, TAPS, TapSelection
from .base import ChunkOutput, Runtime, RuntimeEvalError, TapKey

ATTN_IMPL = "impdiff_sdpa"


@dataclass(frozen=True)
class HookRule:
    module: str  # regex on the HF module path; a group `L` gives the layer
    tap: str  # canonical tap
    source: str = "output"  # "output" | "input" (first positional input) | "attn.q|k|out"
    layout: str = "btf"  # btf: [B, T, F]; bt(hd): [B, T, H*D] -> heads; bhtd / bthd: heads
    convert: str = ""  # "" | "gguf_qk" (llama rope-pair permutation) | "unscale_embed"


H = HookRule
_L = r"model\.layers\.(?P<L>\d+)"

_EMBED = (H(r"model\.embed_tokens", "inp_embd"),)
_ATTN_COMMON = (
    H(_L + r"\.input_layernorm", "attn_norm"),
    H(_L + r"\.self_attn\.v_proj", "Vcur", layout="bt(hd)"),
    H(_L + r"\.self_attn", "kqv", source="attn.out", layout="bthd"),
    H(_L + r"\.self_attn\.o_proj", "kqv_out", source="input"),
    H(_L + r"\.self_attn\.o_proj", "attn_out"),
)
_QK_NEOX = (
    H(_L + r"\.self_attn\.q_proj", "Qcur", layout="bt(hd)"),
    H(_L + r"\.self_attn\.k_proj", "Kcur", layout="bt(hd)"),
    H(_L + r"\.self_attn", "Qcur_pos", source="attn.q", layout="bhtd"),
    H(_L + r"\.self_attn", "Kcur_pos", source="attn.k", layout="bhtd"),
)
_FFN_COMMON = (
    H(_L + r"\.mlp\.gate_proj", "ffn_gate"),
    H(_L + r"\.mlp\.up_proj", "ffn_up"),
    H(_L + r"\.mlp\.down_proj", "ffn_act", source="input"),
    H(_L + r"\.mlp\.down_proj", "ffn_out"),
    H(_L, "l_out"),
    H(r"model\.norm", "result_norm"),
    H(r"lm_head", "result_output"),
)
# llama/qwen3: post_attention_layernorm is the pre-FFN norm; its input is the residual stream
_PRE_FFN_LLAMA = (
    H(_L + r"\.post_attention_layernorm", "ffn_inp", source="input"),
    H(_L + r"\.post_attention_layernorm", "ffn_norm"),
)

HOOK_TABLES: dict[str, tuple[HookRule, ...]] = {
    "llama": _EMBED + _ATTN_COMMON + (
        H(_L + r"\.self_attn\.q_proj", "Qcur", layout="bt(hd)", convert="gguf_qk"),
        H(_L + r"\.self_attn\.k_proj", "Kcur", layout="bt(hd)", convert="gguf_qk"),
        H(_L + r"\.self_attn", "Qcur_pos", source="attn.q", layout="bhtd", convert="gguf_qk"),
        H(_L + r"\.self_attn", "Kcur_pos", source="attn.k", layout="bhtd", convert="gguf_qk"),
    ) + _PRE_FFN_LLAMA + _FFN_COMMON,
    "qwen3": _EMBED + _ATTN_COMMON + _QK_NEOX + (
        # Qwen3 norms Q/K on [B, T, H, D], before the transpose
        H(_L + r"\.self_attn\.q_norm", "Qcur_normed", layout="bthd"),
        H(_L + r"\.self_attn\.k_norm", "Kcur_normed", layout="bthd"),
    ) + _PRE_FFN_LLAMA + _FFN_COMMON,
    "gemma3": (
        # Gemma3TextScaledWordEmbedding returns the embedding already times sqrt(n_embd)
        H(r"model\.embed_tokens", "inp_scaled"),
        H(r"model\.embed_tokens", "inp_embd", convert="unscale_embed"),
    ) + _ATTN_COMMON + _QK_NEOX + (
        # Gemma3 norms Q/K after the transpose, on [B, H, T, D]
        H(_L + r"\.self_attn\.q_norm", "Qcur_normed", layout="bhtd"),
        H(_L + r"\.self_attn\.k_norm", "Kcur_normed", layout="bhtd"),
        H(_L + r"\.post_attention_layernorm", "attn_post_norm"),
        H(_L + r"\.pre_feedforward_layernorm", "ffn_inp", source="input"),
        H(_L + r"\.pre_feedforward_layernorm", "ffn_norm"),
        H(_L + r"\.post_feedforward_layernorm", "ffn_post_norm"),
    ) + _FFN_COMMON,
}

# HF `model_type` -> hook table
FAMILIES: dict[str, str] = {"llama": "llama", "qwen3": "qwen3", "gemma3": "gemma3",
                            "gemma3_text": "gemma3"}

for _family, _rules in HOOK_TABLES.items():  # a typo in the table fails at import, not mid-run
    for _r in _rules:
        if _r.tap not in TAPS:
            raise ValueError(f"transformers hook table {_family}: unknown canonical tap {_r.tap}")


def gguf_qk(x: np.ndarray) -> np.ndarray:
    """HF rope-half order -> GGUF adjacent-pair order, per head: x [T, H, D].

    The same permutation convert_hf_to_gguf applies to Q/K weight rows (LlamaModel.permute)."""
    t, h, d = x.shape
    return x.reshape(t, h, 2, d // 2).swapaxes(2, 3).reshape(t, h, d)


def _to_canonical(x, rule: HookRule, head_dim: int, n_new: int, module) -> np.ndarray:
    import torch

    if isinstance(x, (tuple, list)):
        x = x[0]
    x = x.detach()
    if rule.layout == "bhtd":
        x = x[0, :, -n_new:].transpose(0, 1)  # keys hold the cache too: keep the new tokens
    elif rule.layout == "bthd":
        x = x[0]
    elif rule.layout == "bt(hd)":
        x = x[0].reshape(x.shape[1], -1, head_dim)
    else:
        x = x[0]
    if rule.convert == "unscale_embed":
        x = x / torch.as_tensor(module.embed_scale, dtype=x.dtype)
    arr = x.float().cpu().numpy()
    if rule.convert == "gguf_qk":
        arr = gguf_qk(arr)
    return np.ascontiguousarray(arr)


class _Recorder:
    """The attention wrapper calls this with (module, q, k, out) when a capture is running."""

    active: "TransformersRuntime | None" = None


def _import_pypi_kernels() -> None:
    """Import the PyPI package `kernels` (a dependency of transformers 5, which imports it) from
    its install, not from this project: run from a checkout (`python -m pytest` puts its root
    on sys.path), the folder `kernels/` — installed as `impdiff.kernels` — is found first under
    that name, and transformers fails on `from kernels import CUDAProperties`."""
    if "kernels" in sys.modules:
        return
    from .. import kernels as ours

    root = Path(ours.__file__).resolve().parent.parent
    saved = sys.path[:]
    sys.path[:] = [p for p in saved if Path(p or ".").resolve() != root]
    try:
        if len(sys.path) < len(saved):
            importlib.import_module("kernels")
    except ImportError:  # not installed: transformers then finds no usable `kernels` either
        pass
    finally:
        sys.path[:] = saved


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if ATTN_IMPL in AttentionInterface._global_mapping:
        return

    def impdiff_sdpa(module, query, key, value, attention_mask, **kwargs):
        out, weights = sdpa_attention_forward(module, query, key, value, attention_mask,
                                              **kwargs)
        rt = _Recorder.active
        if rt is not None:
            rt._attention(module, query, key, out)
        return out, weights

    AttentionInterface.register(ATTN_IMPL, impdiff_sdpa)
    AttentionMaskInterface.register(ATTN_IMPL, sdpa_mask)


# transformers' GGUF config mapping (5.x) does not read these keys; its defaults happen to fit
# the published checkpoints (Qwen3 head_dim 128, Gemma 3 query_pre_attn_scalar 256 = head_dim),
# so a model with other values (e.g. the synthetic ones) would load with wrong shapes or a wrong
# attention scale. HF config attribute <- f(GGUF metadata), per architecture.
GGUF_CONFIG_FIXES: dict[str, dict[str, object]] = {
    "qwen3": {"head_dim": lambda g, a: g.get(f"{a}.attention.key_length")},
    "gemma3": {
        "head_dim": lambda g, a: g.get(f"{a}.attention.key_length"),
        # llama.cpp scales Q by 1/sqrt(head_dim), except Gemma 3 27B (62 layers), whose
        # scale is 1/sqrt(n_embd/n_head)
        "query_pre_attn_scalar": lambda g, a: (
            g.get(f"{a}.embedding_length") // g.get(f"{a}.attention.head_count")
            if g.get(f"{a}.block_count") == 62 else g.get(f"{a}.attention.key_length")),
    },
}


def gguf_config_fixes(path: Path) -> dict:
    from ..engine.gguf_file import GGUFFile

    gf = GGUFFile(path)
    arch = gf.architecture
    out = {}
    for attr, read in GGUF_CONFIG_FIXES.get(arch, {}).items():
        try:
            value = read(gf, arch)
        except (TypeError, ZeroDivisionError):
            value = None
        if value is not None:
            out[attr] = int(value) if isinstance(value, (int, np.integer)) else value
    return out


def load_hf_model(target: Path, device: str = "cpu"):
    """The transformers model of a GGUF file or an HF directory: float32, eval mode."""
    import functools

    from ..errors import UsageError

    if importlib.util.find_spec("transformers") is None:
        raise UsageError("the transformers runtime needs transformers: "
                         "pip install 'impdiff[transformers]'")
    if target.is_file() and importlib.util.find_spec("accelerate") is None:
        raise UsageError("transformers needs accelerate to load a GGUF file: "
                         "pip install 'impdiff[transformers]'")
    import torch

    _import_pypi_kernels()
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    _register_attention()
    kw = dict(dtype=torch.float32, attn_implementation=ATTN_IMPL)
    bar = gguf_utils.tqdm  # the GGUF dequantiser draws a bare tqdm bar on stderr
    gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        if target.is_dir():
            model = AutoModelForCausalLM.from_pretrained(str(target), **kw)
        else:
            model = AutoModelForCausalLM.from_pretrained(str(target.parent), gguf_file=target.name,
                                                         **kw, **gguf_config_fixes(target))
    except (ValueError, OSError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"{target}: transformers cannot load this model: "
                             f"{' '.join(str(exc).split())[:300]}") from None
    finally:
        gguf_utils.tqdm = bar
    model.eval()
    if device not in (None, "auto", "cpu"):
        model.to(device)
    return model


class TransformersRuntime(Runtime):
    name = "transformers"

    def __init__(self, target: str | Path, *, taps: TapSelection | None = None,
                 n_ctx: int = 4096, device: str = "cpu", model=None, **_ignored):
        self.target = Path(target)
        if not self.target.exists():
            raise ModelLoadError(f"{self.target}: no such model file or directory")
        self.model = model if model is not None else load_hf_model(self.target, device)
        self.config = self.model.config
        model_type = getattr(self.config, "model_type", "?")
        family = FAMILIES.get(model_type)
        if family is None:
            raise ModelLoadError(f"{self.target}: HF model_type '{model_type}' has no hook table "
                                 f"(known: {', '.join(sorted(FAMILIES))})")
        self.family = family
        self.selection = taps
        self.n_ctx = n_ctx
        self.head_dim = int(getattr(self.config, "head_dim", None)
                            or self.config.hidden_size // self.config.num_attention_heads)
        self.n_vocab = int(self.config.vocab_size)
        self._cache = None
        self._pos = 0
        self._captured: dict[TapKey, np.ndarray] = {}
        self._n_new = 0
        self._paths = {id(m): name for name, m in self.model.named_modules()}
        self._rules = self._bind_rules()
        self._hooks = []
        fwd = inspect.signature(self.model.forward).parameters
        self._cache_kw = "cache" if "cache" in fwd else "past_key_values"
        if taps is not None:
            self._install_hooks()

    # -- the table, bound to this model's modules ---------------------------------------------

    def _bind_rules(self) -> dict[str, list[tuple[HookRule, int]]]:
        """module path -> [(rule, layer)] for every rule that matches a module of the model."""
        compiled = [(re.compile(r.module + r"$"), r) for r in HOOK_TABLES[self.family]]
        bound: dict[str, list[tuple[HookRule, int]]] = {}
        for path in self._paths.values():
            for pattern, rule in compiled:
                m = pattern.match(path)
                if not m:
                    continue
                layer = int(m.group("L")) if "L" in pattern.groupindex else GLOBAL_LAYER
                if TAPS[rule.tap].per_layer != (layer != GLOBAL_LAYER):
                    continue
                bound.setdefault(path, []).append((rule, layer))
        return bound

    def _wanted(self, rule: HookRule, layer: int) -> bool:
        return self.selection is not None and self.selection.wants(rule.tap, layer)

    def _install_hooks(self) -> None:
        modules = dict(self.model.named_modules())
        for path, rules in self._rules.items():
            outs = [(r, l) for r, l in rules if r.source == "output" and self._wanted(r, l)]
            ins = [(r, l) for r, l in rules if r.source == "input" and self._wanted(r, l)]
            module = modules[path]
            if outs:
                self._hooks.append(module.register_forward_hook(self._make_hook(outs, module,
                                                                                out=True)))
            if ins:
                self._hooks.append(module.register_forward_hook(self._make_hook(ins, module,
                                                                                out=False)))

    def _make_hook(self, rules, module, out: bool):
        def hook(mod, args, output):
            x = output if out else args[0]
            for rule, layer in rules:
                self._captured[(rule.tap, layer)] = _to_canonical(x, rule, self.head_dim,
                                                                  self._n_new, module)
        return hook

    def _attention(self, module, q, k, out) -> None:
        path = self._paths.get(id(module))
        for rule, layer in self._rules.get(path, ()):
            if not rule.source.startswith("attn.") or not self._wanted(rule, layer):
                continue
            x = {"attn.q": q, "attn.k": k, "attn.out": out}[rule.source]
            self._captured[(rule.tap, layer)] = _to_canonical(x, rule, self.head_dim,
                                                              self._n_new, module)

    # -- Runtime interface --------------------------------------------------------------------

    @property
    def position(self) -> int:
        return self._pos

    def reset(self) -> None:
        self._cache = None
        self._pos = 0

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def eval(self, token_ids: Sequence[int], last_only: bool = False) -> ChunkOutput:
        import torch
        from transformers import DynamicCache

        ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            raise ValueError("eval: no token ids")
        if self._pos + ids.size > self.n_ctx:
            raise RuntimeEvalError(f"context full: {self._pos} + {ids.size} tokens > n_ctx "
                                   f"{self.n_ctx}")
        bad = ids[(ids < 0) | (ids >= self.n_vocab)]
        if bad.size:
            raise ValueError(f"eval: token id {int(bad[0])} is outside the vocabulary "
                             f"[0, {self.n_vocab})")
        if self._cache is None:
            self._cache = DynamicCache(config=self.config)
        start = self._pos
        self._captured = {}
        self._n_new = int(ids.size)
        kwargs = {self._cache_kw: self._cache, "use_cache": True,
                  "position_ids": torch.arange(start, start + ids.size)[None],
                  "logits_to_keep": 1 if last_only else 0}
        _Recorder.active = self if self.selection is not None else None
        try:
            with torch.inference_mode():
                out = self.model(input_ids=torch.from_numpy(ids)[None], **kwargs)
        finally:
            _Recorder.active = None
        self._pos = start + int(ids.size)
        logits = out.logits[0].float().cpu().numpy()
        taps, self._captured = self._captured, {}
        return ChunkOutput(start, np.ascontiguousarray(logits), taps)


def hf_model_facts(target: Path) -> dict:
    """n_layer, layer kinds and vocabulary of an HF directory, from its config.json."""
    cfg = json.loads((target / "config.json").read_text())
    cfg = cfg.get("text_config", cfg)
    kinds = {}
    for i, t in enumerate(cfg.get("layer_types") or []):
        kinds[i] = "sliding attention" if "sliding" in t else "global attention"
    return {"arch": cfg.get("model_type"), "n_layer": cfg.get("num_hidden_layers"),
            "n_vocab": cfg.get("vocab_size"), "layer_kinds": kinds,
            "n_ctx_train": cfg.get("max_position_embeddings", 4096)}
