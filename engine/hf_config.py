"""HF `config.json` -> `ModelConfig`, with every doubt about the checkpoint kept as data.

`analyze_config` reads a parsed config.json (plus, where present, hf_quant_config.json /
quantize_config.json / quant_config.json and the directory listing) and returns an `HFModelInfo`:
the engine's `ModelConfig`, the NVFP4 layout if any, and two lists —

* ``warnings``: `ConfigWarning(code, message, level)`; the loader prints them and returns them
  with the model. Nothing is dropped silently: an unknown or multi-entry ``architectures``, a
  vision tower that is skipped, a KV-cache quantisation hint that is not acted on, ...
* ``blocking``: reasons the engine cannot run the checkpoint correctly (AWQ / GPTQ / MXFP4 weights
  without a dequantiser here, unsupported rope types, MLA attention). `require_loadable` turns
  them into one `ModelLoadError` line; the warnings stay testable on a small config.

`check_tensors` cross-checks the tri-state flags (``tie_word_embeddings``, ``attention_bias``,
``mlp_bias``: unset / false / true) and GPTQ's ``desc_act`` against the tensors actually present.

Supported classes: LlamaForCausalLM, Qwen3ForCausalLM, Gemma3ForCausalLM (text), and the text part
of Gemma3ForConditionalGeneration.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import ARCHITECTURES, ModelConfig
from .errors import ModelLoadError

HF_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "Qwen3ForCausalLM": "qwen3",
    "Gemma3ForCausalLM": "gemma3",
    "Gemma3ForConditionalGeneration": "gemma3",  # text part only, the vision tower is skipped
}
MODEL_TYPES = {"llama": "llama", "qwen3": "qwen3", "gemma3_text": "gemma3", "gemma3": "gemma3"}
ENGINE_TO_HF = {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM",
                "gemma3": "Gemma3ForCausalLM"}
HF_MODEL_TYPE = {"llama": "llama", "qwen3": "qwen3", "gemma3": "gemma3_text"}
# transformers' class defaults where config.json leaves the key out
TIE_DEFAULT = {"llama": False, "qwen3": False, "gemma3": True}
ACTIVATION = {"llama": ("silu",), "qwen3": ("silu",),
              "gemma3": ("gelu_pytorch_tanh", "gelu_tanh", "gelu_new")}


@dataclass(frozen=True)
class ConfigWarning:
    code: str
    message: str
    level: str = "warning"  # "warning" | "info"

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"


@dataclass
class QuantInfo:
    method: str = "none"  # none | nvfp4 | awq | gptq | mxfp4 | other
    layout: str | None = None  # for nvfp4: "compressed-tensors" | "modelopt"
    group_size: int = 16
    ignore: tuple[str, ...] = ()
    kv_cache_hint: str | None = None
    desc_act: bool | None = None  # GPTQ
    source: str = ""


@dataclass
class HFModelInfo:
    cfg: ModelConfig | None
    hf_arch: str
    arch: str | None
    tie_word_embeddings: bool | None  # as written (None: unset)
    attention_bias: bool | None
    mlp_bias: bool | None
    quant: QuantInfo
    rope_freqs: list[float] | None = None  # Llama-3 per-frequency factors
    text_prefixes: tuple[str, ...] = ("model.",)
    lm_head_names: tuple[str, ...] = ("lm_head.weight",)
    skip_prefixes: tuple[str, ...] = ()  # vision tower etc.
    bos_token_id: Any = None
    eos_token_id: Any = None
    warnings: list[ConfigWarning] = field(default_factory=list)
    blocking: list[str] = field(default_factory=list)

    @property
    def tie_effective(self) -> bool:
        if self.tie_word_embeddings is not None:
            return self.tie_word_embeddings
        return TIE_DEFAULT.get(self.arch or "", False)

    def warn(self, code: str, message: str, level: str = "warning") -> None:
        self.warnings.append(ConfigWarning(code, message, level))

    def codes(self) -> list[str]:
        return [w.code for w in self.warnings]


def read_json(path: Path, what: str | None = None) -> Any:
    """A JSON file, or a ModelLoadError naming the file, line and column."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: {what or 'file'} is missing") from None
    except UnicodeDecodeError as exc:
        raise ModelLoadError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") \
            from None
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates(path))
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column "
                             f"{exc.colno})") from None


def _no_duplicates(path: Path):
    def hook(pairs):
        out = {}
        for k, v in pairs:
            if k in out:
                raise ModelLoadError(f"{path}: key '{k}' appears twice in one JSON object "
                                     "(which one is meant is ambiguous)")
            out[k] = v
        return out
    return hook


# --------------------------------------------------------------------------------------------
# the analysis
# --------------------------------------------------------------------------------------------

def analyze_config(config: dict, source: str = "config.json", *,
                   files: set[str] | frozenset[str] = frozenset(),
                   quant_files: dict[str, dict] | None = None) -> HFModelInfo:
    """Everything the config says, as data. `files`: names in the model directory;
    `quant_files`: parsed hf_quant_config.json / quantize_config.json / quant_config.json."""
    if not isinstance(config, dict):
        raise ModelLoadError(f"{source}: expected a JSON object at the top level")
    quant_files = quant_files or {}
    info = HFModelInfo(cfg=None, hf_arch="", arch=None, tie_word_embeddings=None,
                       attention_bias=None, mlp_bias=None, quant=QuantInfo())
    _detect_arch(config, source, info)
    text = config
    if info.hf_arch == "Gemma3ForConditionalGeneration":
        text = config.get("text_config")
        if not isinstance(text, dict):
            raise ModelLoadError(f"{source}: Gemma3ForConditionalGeneration without a "
                                 "'text_config' object")
        info.text_prefixes = ("language_model.model.", "model.language_model.")
        info.lm_head_names = ("language_model.lm_head.weight", "lm_head.weight")
        info.skip_prefixes = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.",
                              "model.multi_modal_projector.")
    vision = config.get("vision_config")
    if vision is not None:
        vt = vision.get("model_type", "unknown") if isinstance(vision, dict) else "unknown"
        info.warn("vision-skipped",
                  f"{source}: has a vision_config ({vt}); the vision tower is skipped and only "
                  "the language model loads (text-only inference, images are not supported)")
    info.tie_word_embeddings = _tristate(config, "tie_word_embeddings", source)
    if info.tie_word_embeddings is None and text is not config:
        info.tie_word_embeddings = _tristate(text, "tie_word_embeddings", source)
    info.attention_bias = _tristate(text, "attention_bias", source)
    info.mlp_bias = _tristate(text, "mlp_bias", source)
    info.bos_token_id = config.get("bos_token_id", text.get("bos_token_id"))
    info.eos_token_id = config.get("eos_token_id", text.get("eos_token_id"))
    _detect_mla(text, source, info)
    _detect_quant(config, source, info, quant_files)
    _detect_tokenizer(files, source, info)
    if info.arch is not None:
        try:
            info.cfg = _model_config(text, source, info)
        except _Blocking as exc:
            info.blocking.append(str(exc))
    return info


class _Blocking(Exception):
    pass


def require_loadable(info: HFModelInfo, source: str) -> ModelConfig:
    """The ModelConfig, or one ModelLoadError line with every blocking reason."""
    if info.blocking or info.cfg is None:
        reasons = "; ".join(info.blocking) or "no usable model configuration"
        raise ModelLoadError(f"{source}: cannot load: {reasons}")
    return info.cfg


def _detect_arch(config: dict, source: str, info: HFModelInfo) -> None:
    archs = config.get("architectures")
    model_type = config.get("model_type")
    if archs is not None and (not isinstance(archs, list)
                              or not all(isinstance(a, str) for a in archs)):
        raise ModelLoadError(f"{source}: 'architectures' must be a list of class names, got "
                             f"{json.dumps(archs)[:80]}")
    archs = archs or []
    if len(archs) > 1:
        info.warn("arch-multi", f"{source}: architectures lists {len(archs)} classes; using "
                  f"'{archs[0]}', ignoring {', '.join(repr(a) for a in archs[1:])}")
    fallback = MODEL_TYPES.get(model_type) if isinstance(model_type, str) else None
    supported = ", ".join(HF_ARCHITECTURES)
    if not archs:
        if fallback:
            info.hf_arch, info.arch = ENGINE_TO_HF[fallback], fallback
            info.warn("arch-missing", f"{source}: no 'architectures'; inferred '{fallback}' from "
                      f"model_type='{model_type}'")
        else:
            info.blocking.append(f"no 'architectures' and model_type={model_type!r} is not one "
                                 f"the engine knows (supported: {supported})")
        return
    info.hf_arch = archs[0]
    if archs[0] in HF_ARCHITECTURES:
        info.arch = HF_ARCHITECTURES[archs[0]]
        return
    if fallback:
        info.arch = fallback
        info.warn("arch-unknown",
                  f"{source}: architecture '{archs[0]}' is not mapped; running it as engine arch "
                  f"'{fallback}' because model_type='{model_type}'. Outputs are wrong if the "
                  f"architecture differs; add the class to HF_ARCHITECTURES in "
                  "engine/hf_config.py once checked")
    else:
        info.warn("arch-unknown", f"{source}: architecture '{archs[0]}' is not supported "
                  f"(supported: {supported}); add a mapping in engine/hf_config.py")
        info.blocking.append(f"architecture '{archs[0]}' is not supported (supported: "
                             f"{supported})")


def _tristate(config: dict, key: str, source: str) -> bool | None:
    v = config.get(key)
    if v is None or isinstance(v, bool):
        return v
    raise ModelLoadError(f"{source}: '{key}' must be true, false or absent, got {json.dumps(v)}")


def _detect_mla(config: dict, source: str, info: HFModelInfo) -> None:
    ranks = {k: config.get(k) for k in ("kv_lora_rank", "q_lora_rank")}
    active = {k: v for k, v in ranks.items() if isinstance(v, int) and v > 0}
    if active:
        desc = ", ".join(f"{k}={v}" for k, v in active.items())
        info.warn("mla", f"{source}: multi-head latent attention ({desc}, DeepSeek-V2/V3 style); "
                  "the engine implements standard multi-head attention only")
        info.blocking.append(f"MLA attention ({desc}) is not implemented")


def _detect_tokenizer(files, source: str, info: HFModelInfo) -> None:
    if not files:
        return
    if "tokenizer.json" in files or "impdiff_source.json" in files:
        return
    if "tokenizer.model" in files:
        info.warn("tokenizer-sentencepiece-only", sentencepiece_message(source))
    else:
        info.warn("tokenizer-missing", f"{source}: no tokenizer.json in the directory; the "
                  "weights load but text cannot be tokenised")


def sentencepiece_message(where: str) -> str:
    d = Path(where).parent if str(where).endswith(".json") else Path(where)
    return (f"{d}: only tokenizer.model (SentencePiece) is present, and the engine reads "
            "tokenizer.json. Regenerate it with transformers: python -c \"from transformers import "
            f"AutoTokenizer as T; T.from_pretrained('{d}').save_pretrained('{d}')\" "
            "(writes tokenizer.json), or convert the model to GGUF with llama.cpp's "
            "convert_hf_to_gguf.py and load the GGUF")


# --- quantisation ------------------------------------------------------------------------------

def _detect_quant(config: dict, source: str, info: HFModelInfo,
                  quant_files: dict[str, dict]) -> None:
    q = info.quant
    qc = config.get("quantization_config")
    if qc is not None and not isinstance(qc, dict):
        raise ModelLoadError(f"{source}: 'quantization_config' must be an object")
    hfq = quant_files.get("hf_quant_config.json")
    method = str((qc or {}).get("quant_method", "")).lower()
    if hfq is not None and (not qc or method == "modelopt"):
        section = hfq.get("quantization", hfq) if isinstance(hfq, dict) else {}
        section = section if isinstance(section, dict) else {}
        if qc:
            differ = [k for k in ("quant_algo", "group_size", "kv_cache_quant_algo")
                      if k in qc and qc.get(k) != section.get(k)]
            if differ:
                info.warn("modelopt-config-mismatch",
                          f"{source}: quantization_config and hf_quant_config.json disagree on "
                          f"{', '.join(differ)}; hf_quant_config.json (ModelOpt's own file) is "
                          "used")
        _modelopt(section, "hf_quant_config.json", info)
        return
    if qc:
        if method == "compressed-tensors":
            _compressed_tensors(qc, source, info)
        elif method == "modelopt":
            _modelopt(qc, f"{source}:quantization_config", info)
        elif method == "awq":
            _awq(qc, f"{source}:quantization_config", info)
        elif method == "gptq":
            _gptq(qc, f"{source}:quantization_config", info)
        elif method == "mxfp4":
            _mxfp4(qc, source, info)
        else:
            q.method, q.source = "other", f"{source}:quantization_config"
            info.blocking.append(f"quantization method '{method or '?'}' is not supported "
                                 "(supported: compressed-tensors nvfp4-pack-quantized, ModelOpt "
                                 "NVFP4)")
        return
    legacy = quant_files.get("quant_config.json")  # AutoAWQ exports
    if isinstance(legacy, dict) and str(legacy.get("quant_method", "awq")).lower() == "awq" \
            and ("w_bit" in legacy or "bits" in legacy or "quant_method" in legacy):
        _awq(legacy, "quant_config.json", info)
        return
    gq = quant_files.get("quantize_config.json")  # AutoGPTQ exports
    if isinstance(gq, dict):
        _gptq(gq, "quantize_config.json", info)


def _compressed_tensors(qc: dict, source: str, info: HFModelInfo) -> None:
    q = info.quant
    q.source = f"{source}:quantization_config"
    groups = qc.get("config_groups") or {}
    formats = {qc.get("format")} if qc.get("format") else set()
    weights_args = []
    if isinstance(groups, dict):
        for g in groups.values():
            if isinstance(g, dict):
                if g.get("format"):
                    formats.add(g.get("format"))
                if isinstance(g.get("weights"), dict):
                    weights_args.append(g["weights"])
    formats.discard(None)
    if formats != {"nvfp4-pack-quantized"}:
        q.method = "other"
        names = ", ".join(sorted(map(str, formats))) or "?"
        info.blocking.append(f"compressed-tensors format {names} is not supported (supported: "
                             "nvfp4-pack-quantized)")
        return
    q.method, q.layout = "nvfp4", "compressed-tensors"
    for w in weights_args:
        bits, typ, gs = w.get("num_bits"), w.get("type"), w.get("group_size")
        if bits != 4 or typ != "float":
            info.blocking.append(f"nvfp4-pack-quantized weights with num_bits={bits}, type={typ}; "
                                 "NVFP4 is num_bits=4, type=float")
        if gs is not None:
            q.group_size = int(gs)
    if q.group_size != 16:
        info.blocking.append(f"NVFP4 group_size {q.group_size}; the format requires 16")
    ignore = qc.get("ignore") or []
    q.ignore = tuple(str(x) for x in ignore) if isinstance(ignore, list) else ()
    kv = qc.get("kv_cache_scheme")
    if kv:
        q.kv_cache_hint = json.dumps(kv, sort_keys=True)
        info.warn("kv-cache-quant-hint", f"{source}: kv_cache_scheme {q.kv_cache_hint} is a hint "
                  "only; the engine keeps its KV cache in float32", "info")


def _modelopt(section: dict, source: str, info: HFModelInfo) -> None:
    q = info.quant
    q.source = source
    algo = str(section.get("quant_algo") or "").upper()
    kv = section.get("kv_cache_quant_algo")
    if kv:
        q.kv_cache_hint = str(kv)
        info.warn("kv-cache-quant-hint", f"{source}: kv_cache_quant_algo={kv} is a hint only; "
                  "the engine keeps its KV cache in float32 (FP8 KV is not switched on)", "info")
    if algo != "NVFP4":
        q.method = "other"
        info.blocking.append(f"ModelOpt quant_algo '{algo or '?'}' is not supported "
                             "(supported: NVFP4)")
        return
    q.method, q.layout = "nvfp4", "modelopt"
    gs = section.get("group_size")
    if gs is not None:
        q.group_size = int(gs)
    if q.group_size != 16:
        info.blocking.append(f"NVFP4 group_size {q.group_size}; the format requires 16")
    ex = section.get("exclude_modules") or []
    q.ignore = tuple(str(x) for x in ex) if isinstance(ex, list) else ()


def _awq(qc: dict, source: str, info: HFModelInfo) -> None:
    q = info.quant
    q.method, q.source = "awq", source
    bits = qc.get("bits", qc.get("w_bit"))
    gs = qc.get("group_size", qc.get("q_group_size"))
    if gs is not None:
        q.group_size = int(gs)
    info.warn("awq", f"{source}: AWQ checkpoint (bits={bits}, group_size={gs}); the engine has "
              "no AWQ dequantiser, so its qweight/qzeros/scales cannot be used. Use the "
              "unquantised weights, an NVFP4 export, or a GGUF")
    info.blocking.append("AWQ weights are not supported")


def _gptq(qc: dict, source: str, info: HFModelInfo) -> None:
    q = info.quant
    q.method, q.source = "gptq", source
    q.desc_act = bool(qc.get("desc_act")) if qc.get("desc_act") is not None else None
    info.warn("gptq", f"{source}: GPTQ checkpoint (bits={qc.get('bits')}, group_size="
              f"{qc.get('group_size')}, desc_act={qc.get('desc_act')}); the engine has no GPTQ "
              "dequantiser")
    info.blocking.append("GPTQ weights are not supported")


def _mxfp4(qc: dict, source: str, info: HFModelInfo) -> None:
    q = info.quant
    q.method, q.source = "mxfp4", f"{source}:quantization_config"
    q.group_size = int(qc.get("block_size", 32) or 32)
    info.warn("mxfp4", f"{source}: MXFP4 SafeTensors (block size {q.group_size}, UE8M0 scales) "
              "detected; there is no SafeTensors MXFP4 decode path here, use a GGUF of the model")
    info.blocking.append("MXFP4 SafeTensors weights are not supported (use the GGUF)")


# --- hyper-parameters ---------------------------------------------------------------------------

def _get(config: dict, key: str, source: str, kind=int, default=None, required=True):
    v = config.get(key, default)
    if v is None:
        if required:
            raise ModelLoadError(f"{source}: missing '{key}' (required to build the model)")
        return None
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) if kind is float else \
        isinstance(v, int) and not isinstance(v, bool)
    if not ok:
        what = "a number" if kind is float else "an integer"
        raise ModelLoadError(f"{source}: '{key}' must be {what}, got {json.dumps(v)[:60]}")
    if kind is float and not math.isfinite(v):
        raise ModelLoadError(f"{source}: '{key}' must be finite, got {v}")
    if kind is int and v < 0:
        raise ModelLoadError(f"{source}: '{key}' must not be negative, got {v}")
    return kind(v)


def _model_config(c: dict, source: str, info: HFModelInfo) -> ModelConfig:
    arch = info.arch
    spec = ARCHITECTURES[arch]
    n_embd = _get(c, "hidden_size", source)
    n_layer = _get(c, "num_hidden_layers", source)
    n_head = _get(c, "num_attention_heads", source)
    if n_head == 0 or n_embd == 0 or n_layer == 0:
        raise ModelLoadError(f"{source}: hidden_size, num_hidden_layers and num_attention_heads "
                             "must be positive")
    n_head_kv = _get(c, "num_key_value_heads", source, default=n_head)
    if n_head_kv == 0 or n_head % n_head_kv:
        raise ModelLoadError(f"{source}: num_attention_heads={n_head} is not a multiple of "
                             f"num_key_value_heads={n_head_kv}")
    head_dim = _get(c, "head_dim", source, default=n_embd // n_head)
    if head_dim == 0 or head_dim % 2:
        raise ModelLoadError(f"{source}: head_dim={head_dim} must be positive and even")
    n_ff = _get(c, "intermediate_size", source)
    n_vocab = _get(c, "vocab_size", source)
    eps_key = "rms_norm_eps"
    # stored as float32, as llama.cpp's converter does (GGUF keeps it as F32)
    rms_eps = float(struct.unpack("<f", struct.pack("<f", _get(c, eps_key, source, float,
                                                               default=1e-6)))[0])
    n_ctx = _get(c, "max_position_embeddings", source, default=4096)
    rope_base = _get(c, "rope_theta", source, float, default=10000.0)
    act = c.get("hidden_activation") or c.get("hidden_act")
    if act is not None and act not in ACTIVATION[arch]:
        raise _Blocking(f"activation '{act}' differs from what the engine's {arch} uses "
                        f"({ACTIVATION[arch][0]})")
    for soft in ("attn_logit_softcapping",):
        if c.get(soft):
            raise _Blocking(f"'{soft}'={c.get(soft)} is not implemented")

    freq_scale = 1.0
    rs = c.get("rope_scaling")
    if rs is not None:
        if not isinstance(rs, dict):
            raise ModelLoadError(f"{source}: 'rope_scaling' must be an object or null")
        rtype = str(rs.get("rope_type", rs.get("type", ""))).lower()
        if rtype in ("", "default"):
            pass
        elif rtype == "linear":
            factor = rs.get("factor")
            if not isinstance(factor, (int, float)) or factor <= 0:
                raise ModelLoadError(f"{source}: rope_scaling linear needs a positive 'factor', "
                                     f"got {factor!r}")
            freq_scale = 1.0 / float(factor)
        elif rtype == "llama3" and arch == "llama":
            info.rope_freqs = _llama3_factors(rs, rope_base, head_dim, source, info)
        else:
            raise _Blocking(f"rope_scaling type '{rtype}' is not supported for {arch} "
                            "(supported: linear" + (", llama3" if arch == "llama" else "") + ")")

    sliding_window, is_swa, rope_base_swa = 0, (), spec.default_rope_base_swa
    attn_scale = 1.0 / math.sqrt(head_dim)
    softcap = 0.0
    if arch == "gemma3":
        sliding_window = _get(c, "sliding_window", source, default=0, required=False) or 0
        rope_base_swa = _get(c, "rope_local_base_freq", source, float,
                             default=spec.default_rope_base_swa)
        qpas = _get(c, "query_pre_attn_scalar", source, float, default=head_dim)
        if qpas <= 0:
            raise ModelLoadError(f"{source}: query_pre_attn_scalar must be positive")
        attn_scale = qpas ** -0.5
        softcap = _get(c, "final_logit_softcapping", source, float, default=0.0,
                       required=False) or 0.0
        if sliding_window:
            is_swa = _gemma_layer_types(c, n_layer, source, spec.swa_period)
    elif arch == "qwen3" and c.get("use_sliding_window"):
        info.warn("sliding-window-ignored", f"{source}: use_sliding_window=true; Qwen3 (and "
                  "llama.cpp) attend over the full context, the window is ignored")

    return ModelConfig(
        arch=arch, n_vocab=n_vocab, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
        n_head_kv=n_head_kv, head_dim=head_dim, n_ff=n_ff, rms_eps=rms_eps, n_ctx_train=n_ctx,
        rope_base=rope_base, rope_base_swa=rope_base_swa, rope_freq_scale=freq_scale,
        n_rot=head_dim, sliding_window=sliding_window, is_swa=is_swa, attn_scale=attn_scale,
        final_logit_softcap=softcap, spec=spec)


def _gemma_layer_types(c: dict, n_layer: int, source: str, default_period: int
                       ) -> tuple[bool, ...]:
    types = c.get("layer_types")
    if types is not None:
        if not isinstance(types, list) or len(types) != n_layer or not all(
                t in ("sliding_attention", "full_attention") for t in types):
            raise ModelLoadError(f"{source}: 'layer_types' must list {n_layer} entries of "
                                 "'sliding_attention' / 'full_attention'")
        return tuple(t == "sliding_attention" for t in types)
    period = c.get("sliding_window_pattern", c.get("_sliding_window_pattern", default_period))
    if not isinstance(period, int) or isinstance(period, bool) or period < 0:
        raise ModelLoadError(f"{source}: 'sliding_window_pattern' must be a non-negative "
                             f"integer, got {json.dumps(period)}")
    return tuple(period == 0 or (i % period < period - 1) for i in range(n_layer))


def _llama3_factors(rs: dict, base: float, head_dim: int, source: str, info: HFModelInfo
                    ) -> list[float] | None:
    """The per-pair frequency divisors convert_hf_to_gguf.py writes as rope_freqs.weight."""
    factor = rs.get("factor", 8.0)
    low = rs.get("low_freq_factor", 1.0)
    high = rs.get("high_freq_factor", 4.0)
    old = rs.get("original_max_position_embeddings", 8192)
    nums = (factor, low, high, old)
    if (not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in nums)
            or factor <= 0 or low <= 0 or high <= 0 or old <= 0 or high < low):
        info.warn("rope-llama3-degenerate",
                  f"{source}: rope_scaling llama3 has unusable parameters (factor={factor}, "
                  f"low_freq_factor={low}, high_freq_factor={high}, "
                  f"original_max_position_embeddings={old}); no per-frequency table is applied, "
                  "so long contexts run with unscaled rope")
        return None
    low_wavelen, high_wavelen = old / low, old / high
    factors = []
    for i in range(0, head_dim, 2):
        freq = 1.0 / (base ** (i / head_dim))
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(float(factor))
        elif high == low:  # an empty middle band; only a wavelength exactly on it lands here
            factors.append(float(factor))
        else:
            smooth = (old / wavelen - low) / (high - low)
            factors.append(1.0 / ((1 - smooth) / factor + smooth))
    info.warn("rope-llama3", f"{source}: Llama-3 rope scaling (factor {factor}, low/high freq "
              f"factor {low}/{high}, original context {old}) applied as a per-frequency table",
              "info")
    return factors


# --- tensors present vs the config --------------------------------------------------------------

ATTN_BIAS = ("q_proj.bias", "k_proj.bias", "v_proj.bias", "o_proj.bias")
MLP_BIAS = ("gate_proj.bias", "up_proj.bias", "down_proj.bias")


def check_tensors(info: HFModelInfo, names: set[str], source: str) -> None:
    """Cross-check the tri-state flags and GPTQ desc_act against the tensors present."""
    has_head = any(n in names for n in info.lm_head_names)
    tie_raw, tie = info.tie_word_embeddings, info.tie_effective
    unset = "" if tie_raw is not None else f" (unset; {info.arch}'s default is {tie})"
    if tie and has_head:
        info.warn("tie-lm-head-ignored", f"{source}: tie_word_embeddings={tie}{unset} but "
                  "lm_head.weight is present; it is ignored and the embedding is used, as "
                  "transformers does")
    elif not tie and not has_head:
        info.warn("tie-missing-lm-head", f"{source}: tie_word_embeddings={tie}{unset} but "
                  "lm_head.weight is missing; falling back to the tied embedding")

    for flag, suffixes, what in (("attention_bias", ATTN_BIAS, "attention"),
                                 ("mlp_bias", MLP_BIAS, "MLP")):
        raw = getattr(info, flag)
        present = sorted(n for n in names if n.endswith(suffixes))
        if raw and not present:
            info.warn(f"{flag}-missing", f"{source}: {flag}=true but no {what} bias tensors are "
                      "present; they are taken as zero")
        if present:
            info.warn(f"{flag}-present", f"{source}: {len(present)} {what} bias tensors (e.g. "
                      f"{present[0]}) with {flag}={raw}; the engine has no {what} bias path")
            info.blocking.append(f"{what} bias tensors are present ({present[0]}, ...) and the "
                                 "engine has no bias path")

    if info.quant.method == "gptq" and info.quant.desc_act:
        if not any(n.endswith(".g_idx") for n in names):
            info.warn("gptq-desc-act-no-gidx", f"{source}: GPTQ desc_act=true but no g_idx "
                      "tensor is present; sequential grouping would silently miscompute")
