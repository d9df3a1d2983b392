"""`impdiff convert`: one model's weights in several formats, for format A/B runs.

* GGUF -> HF SafeTensors directory: every tensor dequantised (by the engine's own dequantisers)
  and stored as BF16 (or F16 / F32), with HF names (Llama Q/K rows un-permuted, Gemma norms
  stored as w instead of 1 + w), `config.json` written from the GGUF metadata, and a
  `tokenizer.json` built from the GGUF vocabulary (the engine tokenizer's merge model plus its
  special-token and space handling; see `engine.hf_tokenizer.tokenizer_json_from_gguf`). A GGUF
  without a vocabulary (tokenizer.ggml.model 'none') gets no tokenizer.json; the directory's
  `impdiff_source.json` names the GGUF, and the tokenizer comes from there.
* HF directory (BF16 / F16 / F32) -> NVFP4 in either layout: `nvfp4-ct` (compressed-tensors,
  llm-compressor's `nvfp4-pack-quantized`) or `nvfp4-modelopt` (NVIDIA ModelOpt). The seven
  linear projections of every layer are quantised (embeddings, norms and lm_head stay BF16, as
  both producers do by default). Activation scales are calibrated: the source model runs a short
  filler text and each linear's input maximum gives `input_global_scale` / `input_scale` (the
  engine loads them but does not use them).
* GGUF -> NVFP4 goes through BF16, so the NVFP4 weights are exactly those a BF16 -> NVFP4 step
  would give.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import UsageError

TARGETS = ("bf16", "f16", "f32", "nvfp4-ct", "nvfp4-modelopt")
_FLOAT = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}
_GGUF_TO_HF_LAYER = {
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
    "post_attention_norm": "post_attention_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}
LINEAR_SUFFIXES = ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                   "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
                   "mlp.down_proj.weight")
# which tap holds the input of each linear (for activation-scale calibration)
_LINEAR_INPUT_TAP = {"q_proj": "attn_norm", "k_proj": "attn_norm", "v_proj": "attn_norm",
                     "o_proj": "kqv_out", "gate_proj": "ffn_norm", "up_proj": "ffn_norm",
                     "down_proj": "ffn_act"}


@dataclass
class ConvertResult:
    out: Path
    target: str
    files: list[Path]
    n_tensors: int
    n_quantised: int = 0
    tokenizer: str = ""  # "tokenizer.json" | "from GGUF <path>" | "none"
    notes: list[str] = field(default_factory=list)


def parse_size(text: str | None) -> int | None:
    """'200MB', '2GB', '1000000' -> bytes."""
    if not text:
        return None
    t = text.strip().upper()
    mult = 1
    for unit, m in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3), ("B", 1)):
        if t.endswith(unit):
            t, mult = t[:-len(unit)], m
            break
    try:
        n = int(float(t) * mult)
    except ValueError:
        raise UsageError(f"--shard-size '{text}': expected a size like 200MB or 2GB") from None
    if n <= 0:
        raise UsageError(f"--shard-size '{text}': must be positive")
    return n


# --------------------------------------------------------------------------------------------
# GGUF -> HF
# --------------------------------------------------------------------------------------------

def gguf_hf_config(gf, cfg, tokenizer=None) -> dict:
    from .engine.hf_config import ENGINE_TO_HF, HF_MODEL_TYPE

    if cfg.n_rot != cfg.head_dim:
        raise UsageError(f"{gf.path}: rope on {cfg.n_rot} of {cfg.head_dim} head dims has no "
                         "config.json form for this architecture")
    if "rope_freqs.weight" in gf.tensors:
        raise UsageError(f"{gf.path}: a rope_freqs table (Llama-3 rope scaling) cannot be turned "
                         "back into rope_scaling parameters")
    c = {
        "architectures": [ENGINE_TO_HF[cfg.arch]], "model_type": HF_MODEL_TYPE[cfg.arch],
        "vocab_size": cfg.n_vocab, "hidden_size": cfg.n_embd,
        "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_head_kv, "head_dim": cfg.head_dim,
        "intermediate_size": cfg.n_ff, "max_position_embeddings": cfg.n_ctx_train,
        "rope_theta": cfg.rope_base, "rms_norm_eps": cfg.rms_eps,
        "tie_word_embeddings": "output.weight" not in gf.tensors,
        "attention_bias": False, "torch_dtype": "bfloat16",
    }
    if cfg.arch == "llama":
        c["mlp_bias"] = False
    if cfg.arch == "gemma3":
        c["hidden_activation"] = "gelu_pytorch_tanh"
        c["query_pre_attn_scalar"] = round(1.0 / cfg.attn_scale ** 2, 6)
        c["rope_local_base_freq"] = cfg.rope_base_swa
        c["sliding_window"] = cfg.sliding_window or None
        if cfg.is_swa:
            c["layer_types"] = ["sliding_attention" if s else "full_attention"
                                for s in cfg.is_swa]
        c["final_logit_softcapping"] = cfg.final_logit_softcap or None
        c["attn_logit_softcapping"] = None
    else:
        c["hidden_act"] = "silu"
    if cfg.rope_freq_scale != 1.0:
        c["rope_scaling"] = {"rope_type": "linear", "factor": 1.0 / cfg.rope_freq_scale}
    else:
        c["rope_scaling"] = None
    if tokenizer is not None and tokenizer.model != "none":
        if tokenizer.bos_id is not None:
            c["bos_token_id"] = tokenizer.bos_id
        if tokenizer.eos_id is not None:
            c["eos_token_id"] = tokenizer.eos_id
    return c


def gguf_hf_tensors(gf, cfg) -> dict[str, torch.Tensor]:
    """Every GGUF tensor dequantised to float32, under its HF name."""
    from .engine.quants import dequantize
    from .engine.safetensors_loader import unpermute_llama_qk

    out: dict[str, torch.Tensor] = {}
    gemma = cfg.arch == "gemma3"
    for name, raw in gf.tensors.items():
        w = dequantize(raw.data, raw.qtype, raw.shape).to(torch.float32)
        parts = name.split(".")
        if gemma and parts[-2].endswith("norm"):
            w = w - 1.0
        if parts[0] == "blk":
            i, kind = parts[1], parts[2]
            if cfg.arch == "llama" and kind in ("attn_q", "attn_k"):
                w = unpermute_llama_qk(w, cfg.n_head if kind == "attn_q" else cfg.n_head_kv)
            hf_kind = _GGUF_TO_HF_LAYER.get(kind)
            if kind == "ffn_norm":
                hf_kind = "pre_feedforward_layernorm" if gemma else "post_attention_layernorm"
            if hf_kind is None:
                raise UsageError(f"{gf.path}: tensor '{name}' has no HF counterpart")
            out[f"model.layers.{i}.{hf_kind}.weight"] = w.contiguous()
        else:
            hf = {"token_embd.weight": "model.embed_tokens.weight",
                  "output_norm.weight": "model.norm.weight",
                  "output.weight": "lm_head.weight"}.get(name)
            if hf is None:
                raise UsageError(f"{gf.path}: tensor '{name}' has no HF counterpart")
            out[hf] = w.contiguous()
    return out


def tokenizer_files(tokenizer) -> dict[str, str]:
    """tokenizer.json, tokenizer_config.json and generation_config.json for a GGUF vocabulary."""
    from .engine.hf_tokenizer import tokenizer_json_from_gguf

    tj = tokenizer_json_from_gguf(tokenizer)
    if tokenizer.add_eos and tokenizer.eos_id is not None and tj.get("post_processor"):
        eos = tokenizer.tokens[tokenizer.eos_id]
        pp = tj["post_processor"]
        pp["single"].append({"SpecialToken": {"id": eos, "type_id": 0}})
        pp["special_tokens"][eos] = {"id": eos, "ids": [tokenizer.eos_id], "tokens": [eos]}
    tc = {"tokenizer_class": "PreTrainedTokenizerFast",
          "add_bos_token": bool(tokenizer.add_bos), "add_eos_token": bool(tokenizer.add_eos),
          "bos_token": tokenizer.tokens[tokenizer.bos_id] if tokenizer.bos_id is not None
          else None,
          "eos_token": tokenizer.tokens[tokenizer.eos_id] if tokenizer.eos_id is not None
          else None}
    if tokenizer.chat_template:
        tc["chat_template"] = tokenizer.chat_template
    gc = {"bos_token_id": tokenizer.bos_id, "eos_token_id": sorted(tokenizer.eog_ids)}
    return {"tokenizer.json": json.dumps(tj, ensure_ascii=False),
            "tokenizer_config.json": json.dumps(tc, indent=2, ensure_ascii=False),
            "generation_config.json": json.dumps(gc, indent=2)}


def write_safetensors(out: Path, tensors: dict[str, torch.Tensor], shard_size: int | None,
                      metadata: dict[str, str] | None = None) -> list[Path]:
    """model.safetensors, or shards + model.safetensors.index.json when over shard_size."""
    from safetensors.torch import save_file

    meta = {"format": "pt", **(metadata or {})}
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    if not shard_size or total <= shard_size:
        path = out / "model.safetensors"
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=meta)
        return [path]
    groups: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, v in tensors.items():
        n = v.numel() * v.element_size()
        if groups[-1] and size + n > shard_size:
            groups.append({})
            size = 0
        groups[-1][k] = v.contiguous()
        size += n
    files, weight_map = [], {}
    for i, g in enumerate(groups):
        name = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        save_file(g, str(out / name), metadata=meta)
        files.append(out / name)
        weight_map.update({k: name for k in g})
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return files


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists():
        if not out.is_dir():
            raise UsageError(f"--out {out}: exists and is not a directory")
        if any(out.iterdir()):
            if not overwrite:
                raise UsageError(f"--out {out}: directory is not empty (use --overwrite)")
            for p in out.iterdir():
                if p.is_file():
                    p.unlink()
    out.mkdir(parents=True, exist_ok=True)


def gguf_to_hf(src: Path, out: Path, target: str = "bf16", shard_size: int | None = None,
               overwrite: bool = False) -> ConvertResult:
    from .engine.config import config_from_gguf
    from .engine.gguf_file import GGUFFile
    from .engine.tokenizer import Tokenizer

    if target not in _FLOAT:
        raise UsageError(f"--to {target}: a GGUF converts to bf16, f16 or f32 here")
    gf = GGUFFile(src)
    cfg = config_from_gguf(gf)
    tok = Tokenizer.from_gguf(gf)
    _prepare_out(out, overwrite)
    config = gguf_hf_config(gf, cfg, tok)
    config["torch_dtype"] = {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}[target]
    tensors = {k: v.to(_FLOAT[target]) for k, v in gguf_hf_tensors(gf, cfg).items()}
    files = write_safetensors(out, tensors, shard_size)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    import gguf as gguf_pkg

    ftype = gf.get("general.file_type")
    try:
        ftype_name = gguf_pkg.LlamaFileType(int(ftype)).name.replace("MOSTLY_", "")
    except (ValueError, TypeError):
        ftype_name = str(ftype)
    source = {"gguf": str(Path(src).resolve()), "gguf_file_type": ftype_name,
              "converted_to": target, "by": "impdiff convert"}
    (out / "impdiff_source.json").write_text(json.dumps(source, indent=2))
    result = ConvertResult(out, target, files, len(tensors))
    if tok.model == "none":
        result.tokenizer = f"from GGUF {source['gguf']} (it has no vocabulary to write)"
    else:
        for name, text in tokenizer_files(tok).items():
            (out / name).write_text(text, encoding="utf-8")
        result.tokenizer = "tokenizer.json"
    result.notes.append(f"dequantised from {ftype_name} by the engine's dequantisers, stored as "
                        f"{target.upper()}")
    return result


# --------------------------------------------------------------------------------------------
# HF -> NVFP4
# --------------------------------------------------------------------------------------------

def calibrate_input_amax(src: Path, n_tokens: int = 256) -> dict[str, float]:
    """Max |input| of every linear over a filler text, keyed by HF module name."""
    from .engine.generate import Session
    from .engine.loader import load_model
    from .prompts import filler_ids

    loaded = load_model(src, "cpu")
    try:
        tok = loaded.tokenizer
        ids = filler_ids(tok, n_tokens) if tok.model != "none" else None
    except Exception:  # no usable tokenizer: seeded ids stand in
        ids = None
    if ids is None:
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, loaded.cfg.n_vocab, (n_tokens,), generator=g).tolist()
    amax: dict[tuple[str, int], float] = {}

    def tap(name, layer, x):
        if name in ("attn_norm", "kqv_out", "ffn_norm", "ffn_act"):
            v = float(x.detach().abs().max())
            amax[(name, layer)] = max(amax.get((name, layer), 0.0), v)
        return None

    Session(loaded.model, n_ctx=len(ids) + 8).eval(ids, tap, all_logits=False)
    out = {}
    for i in range(loaded.cfg.n_layer):
        for proj, tap_name in _LINEAR_INPUT_TAP.items():
            part = "self_attn" if proj in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            out[f"model.layers.{i}.{part}.{proj}"] = amax.get((tap_name, i), 0.0)
    return out


def quantize_hf_dir(src: Path, out: Path, layout: str, shard_size: int | None = None,
                    overwrite: bool = False, calib_tokens: int = 256) -> ConvertResult:
    from .engine import nvfp4
    from .engine.hf_config import read_json
    from .engine.safetensors_loader import open_checkpoint

    config = read_json(src / "config.json")
    if config.get("quantization_config") or (src / "hf_quant_config.json").exists():
        raise UsageError(f"{src}: is already quantised; convert from a BF16/F16/F32 directory")
    ckpt = open_checkpoint(src)
    raw = ckpt.read_all()
    if Path(out).resolve() == Path(src).resolve():
        raise UsageError("--out must differ from the source directory")
    amax = calibrate_input_amax(src, calib_tokens)
    _prepare_out(out, overwrite)
    names = nvfp4.TENSOR_NAMES[layout]
    tensors: dict[str, torch.Tensor] = {}
    n_q = 0
    for name, t in raw.items():
        if name.endswith(LINEAR_SUFFIXES) and t.dim() == 2 and t.shape[1] % nvfp4.GROUP_SIZE == 0:
            module = name[:-len(".weight")]
            q = nvfp4.quantize(t.to(torch.float32), layout)
            for k, v in q.items():
                tensors[f"{module}.{k}"] = v
            tensors[f"{module}.{names['input']}"] = nvfp4.activation_scale(
                amax.get(module, 0.0), layout)
            n_q += 1
        else:
            tensors[name] = t.to(torch.bfloat16) if t.dtype.is_floating_point else t
    files = write_safetensors(out, tensors, shard_size)
    ignore = ["lm_head"]
    new_config = dict(config)
    new_config["torch_dtype"] = "bfloat16"
    if layout == "compressed-tensors":
        scheme = {"num_bits": 4, "type": "float", "strategy": "tensor_group", "group_size": 16,
                  "symmetric": True, "dynamic": False, "observer": "minmax"}
        new_config["quantization_config"] = {
            "quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized",
            "quantization_status": "compressed", "ignore": ignore, "kv_cache_scheme": None,
            "config_groups": {"group_0": {
                "format": "nvfp4-pack-quantized", "targets": ["Linear"], "weights": scheme,
                "input_activations": {**scheme, "dynamic": "local"},
                "output_activations": None}},
            "producer": "impdiff convert (layout of llm-compressor's NVFP4 scheme)"}
    else:
        section = {"quant_algo": "NVFP4", "kv_cache_quant_algo": None, "group_size": 16,
                   "exclude_modules": ignore}
        (out / "hf_quant_config.json").write_text(json.dumps(
            {"producer": {"name": "modelopt", "version": "impdiff convert (ModelOpt layout)"},
             "quantization": section}, indent=2))
        new_config["quantization_config"] = {"quant_method": "modelopt", **section}
    (out / "config.json").write_text(json.dumps(new_config, indent=2))
    for extra in ("tokenizer.json", "tokenizer_config.json", "generation_config.json",
                  "tokenizer.model", "impdiff_source.json", "special_tokens_map.json"):
        if (src / extra).exists():
            shutil.copyfile(src / extra, out / extra)
    result = ConvertResult(out, layout, files, len(tensors), n_q)
    result.tokenizer = ("tokenizer.json (copied)" if (out / "tokenizer.json").exists()
                        else "from the GGUF named in impdiff_source.json"
                        if (out / "impdiff_source.json").exists() else "none")
    result.notes.append(f"{n_q} linear weights quantised to NVFP4 ({layout}); activation scales "
                        f"calibrated on {calib_tokens} filler tokens (loaded but unused by the "
                        "engine)")
    return result


def convert(src: Path, out: Path, target: str, shard_size: int | None = None,
            overwrite: bool = False, calib_tokens: int = 256) -> ConvertResult:
    from .engine.loader import is_hf_path

    if target not in TARGETS:
        raise UsageError(f"--to {target}: expected one of {', '.join(TARGETS)}")
    src = Path(src)
    if not src.exists():
        raise UsageError(f"{src}: no such file or directory")
    hf_src = is_hf_path(src)
    if hf_src and not src.is_dir():
        src = src.parent
    if target in _FLOAT:
        if hf_src:
            raise UsageError(f"{src}: is already an HF directory; --to {target} converts GGUF "
                             "files")
        return gguf_to_hf(src, Path(out), target, shard_size, overwrite)
    layout = "compressed-tensors" if target == "nvfp4-ct" else "modelopt"
    if hf_src:
        return quantize_hf_dir(src, Path(out), layout, shard_size, overwrite, calib_tokens)
    with tempfile.TemporaryDirectory(prefix="impdiff-bf16-") as tmp:
        gguf_to_hf(src, Path(tmp), "bf16")
        result = quantize_hf_dir(Path(tmp), Path(out), layout, shard_size, overwrite,
                                 calib_tokens)
    result.notes.insert(0, "via BF16 (GGUF -> BF16 -> NVFP4)")
    return result
