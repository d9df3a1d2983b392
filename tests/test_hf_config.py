"""HF config.json auto-detection: every warning of the seeds on a small config, as data."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from impdiff.engine.config import config_from_gguf
from impdiff.engine.errors import ModelLoadError
from impdiff.engine.gguf_file import GGUFFile
from impdiff.engine.hf_config import (analyze_config, check_tensors, read_json,
                                      require_loadable)

LLAMA = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128,
    "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "intermediate_size": 128, "max_position_embeddings": 2048,
    "rope_theta": 500000.0, "rms_norm_eps": 1e-5,
}
GEMMA = {
    "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "vocab_size": 128,
    "hidden_size": 64, "num_hidden_layers": 6, "num_attention_heads": 4,
    "num_key_value_heads": 1, "head_dim": 32, "intermediate_size": 128,
    "max_position_embeddings": 32768, "rope_theta": 1e6, "rope_local_base_freq": 1e4,
    "rms_norm_eps": 1e-6, "sliding_window": 512, "query_pre_attn_scalar": 32,
    "hidden_activation": "gelu_pytorch_tanh",
}
LAYER = "model.layers.0."
BASE_TENSORS = {"model.embed_tokens.weight", "model.norm.weight", LAYER + "self_attn.q_proj.weight"}


def info_of(config, **kw):
    return analyze_config(config, "cfg/config.json", **kw)


def test_plain_llama_has_no_warnings_and_builds_the_config():
    info = info_of(LLAMA)
    assert info.warnings == [] and info.blocking == []
    cfg = require_loadable(info, "x")
    assert (cfg.arch, cfg.n_head, cfg.n_head_kv, cfg.head_dim) == ("llama", 4, 2, 16)
    assert cfg.rope_base == 500000.0 and not cfg.spec.rope_neox


# --- Llama-3 rope scaling ----------------------------------------------------------------------

LLAMA31_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def test_llama3_rope_scaling_gives_the_per_frequency_table():
    info = info_of({**LLAMA, "rope_scaling": LLAMA31_ROPE, "head_dim": 128})
    assert "rope-llama3" in info.codes()
    f = info.rope_freqs
    assert len(f) == 64
    # the table convert_hf_to_gguf.py writes: 1 for short wavelengths, `factor` for long ones,
    # a smooth ramp between
    base, dim = 500000.0, 128
    for i, got in enumerate(f):
        wavelen = 2 * math.pi * base ** (2 * i / dim)
        if wavelen < 8192 / 4:
            assert got == 1.0
        elif wavelen > 8192 / 1:
            assert got == 8.0
        else:
            smooth = (8192 / wavelen - 1) / (4 - 1)
            assert got == pytest.approx(1 / ((1 - smooth) / 8 + smooth))
    assert f[0] == 1.0 and f[-1] == 8.0 and any(1 < x < 8 for x in f)
    assert require_loadable(info, "x").rope_freq_scale == 1.0


def test_llama3_rope_degenerate_config_warns_and_skips_the_table():
    bad = {**LLAMA31_ROPE, "low_freq_factor": 4.0, "high_freq_factor": 1.0}
    info = info_of({**LLAMA, "rope_scaling": bad})
    assert "rope-llama3-degenerate" in info.codes() and info.rope_freqs is None


def test_linear_and_unsupported_rope_scaling():
    info = info_of({**LLAMA, "rope_scaling": {"rope_type": "linear", "factor": 4.0}})
    assert require_loadable(info, "x").rope_freq_scale == 0.25
    info = info_of({**LLAMA, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
    with pytest.raises(ModelLoadError, match="rope_scaling type 'yarn' is not supported"):
        require_loadable(info, "cfg/config.json")


# --- tri-state flags against the tensors --------------------------------------------------------

@pytest.mark.parametrize("tie,lm_head,code", [
    (True, True, "tie-lm-head-ignored"),
    (False, False, "tie-missing-lm-head"),
    (None, False, "tie-missing-lm-head"),  # unset: Llama's default is untied
    (True, False, None),
    (False, True, None),
    (None, True, None),
])
def test_tie_word_embeddings_tristate(tie, lm_head, code):
    cfg = dict(LLAMA)
    if tie is not None:
        cfg["tie_word_embeddings"] = tie
    info = info_of(cfg)
    assert info.tie_word_embeddings is tie
    check_tensors(info, BASE_TENSORS | ({"lm_head.weight"} if lm_head else set()), "d")
    codes = [c for c in info.codes() if c.startswith("tie")]
    assert codes == ([code] if code else [])


def test_gemma_default_ties():
    info = info_of(GEMMA)
    check_tensors(info, set(BASE_TENSORS), "d")
    assert info.tie_effective and not [c for c in info.codes() if c.startswith("tie")]


@pytest.mark.parametrize("flag,suffix", [("attention_bias", "self_attn.q_proj.bias"),
                                         ("mlp_bias", "mlp.up_proj.bias")])
def test_bias_flags_cross_checked(flag, suffix):
    info = info_of({**LLAMA, flag: True})
    check_tensors(info, set(BASE_TENSORS), "d")
    assert f"{flag}-missing" in info.codes() and not info.blocking
    # tensors present (whatever the flag says) -> reported and refused: no bias path to drop
    for value in (None, False, True):
        info = info_of({**LLAMA, flag: value} if value is not None else dict(LLAMA))
        check_tensors(info, BASE_TENSORS | {LAYER + suffix}, "d")
        assert f"{flag}-present" in info.codes()
        with pytest.raises(ModelLoadError, match="bias"):
            require_loadable(info, "cfg/config.json")


def test_tristate_must_be_boolean():
    with pytest.raises(ModelLoadError, match="'tie_word_embeddings' must be true, false"):
        info_of({**LLAMA, "tie_word_embeddings": "yes"})


# --- architectures --------------------------------------------------------------------------------

def test_multi_entry_architectures_warns_with_the_dropped_ones():
    info = info_of({**LLAMA, "architectures": ["LlamaForCausalLM", "LlamaModel", "X"]})
    assert info.codes() == ["arch-multi"]
    assert "'LlamaModel', 'X'" in info.warnings[0].message
    assert info.arch == "llama"


def test_unknown_architecture_falls_back_on_model_type_with_a_warning():
    info = info_of({**LLAMA, "architectures": ["MistralForCausalLM"]})
    assert info.codes() == ["arch-unknown"] and info.arch == "llama" and not info.blocking
    assert "HF_ARCHITECTURES" in info.warnings[0].message  # actionable


def test_unknown_architecture_without_fallback_blocks():
    info = info_of({**LLAMA, "architectures": ["RwkvForCausalLM"], "model_type": "rwkv"})
    assert "arch-unknown" in info.codes()
    with pytest.raises(ModelLoadError, match="architecture 'RwkvForCausalLM' is not supported"):
        require_loadable(info, "cfg/config.json")


def test_missing_architectures_inferred_from_model_type():
    cfg = {k: v for k, v in GEMMA.items() if k != "architectures"}
    info = info_of(cfg)
    assert info.codes() == ["arch-missing"] and info.arch == "gemma3"


# --- quantisation hints -------------------------------------------------------------------------

def test_modelopt_nvfp4_and_kv_cache_hint():
    hq = {"producer": {"name": "modelopt"},
          "quantization": {"quant_algo": "NVFP4", "kv_cache_quant_algo": "FP8",
                           "group_size": 16, "exclude_modules": ["lm_head"]}}
    info = info_of(LLAMA, quant_files={"hf_quant_config.json": hq})
    assert (info.quant.method, info.quant.layout) == ("nvfp4", "modelopt")
    assert info.quant.kv_cache_hint == "FP8" and info.codes() == ["kv-cache-quant-hint"]
    assert info.warnings[0].level == "info" and not info.blocking


def test_compressed_tensors_nvfp4_detection_and_kv_scheme_hint():
    qc = {"quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized",
          "ignore": ["lm_head"], "kv_cache_scheme": {"num_bits": 8, "type": "float"},
          "config_groups": {"g": {"weights": {"num_bits": 4, "type": "float",
                                              "group_size": 16}}}}
    info = info_of({**LLAMA, "quantization_config": qc})
    assert (info.quant.method, info.quant.layout) == ("nvfp4", "compressed-tensors")
    assert info.quant.ignore == ("lm_head",) and info.codes() == ["kv-cache-quant-hint"]
    bad = {**qc, "config_groups": {"g": {"weights": {"num_bits": 4, "type": "float",
                                                     "group_size": 32}}}}
    with pytest.raises(ModelLoadError, match="group_size 32"):
        require_loadable(info_of({**LLAMA, "quantization_config": bad}), "c")


def test_other_compressed_tensors_formats_block():
    qc = {"quant_method": "compressed-tensors", "format": "float-quantized"}
    with pytest.raises(ModelLoadError, match="float-quantized is not supported"):
        require_loadable(info_of({**LLAMA, "quantization_config": qc}), "c")


def test_gptq_desc_act_without_g_idx():
    qc = {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": True}
    info = info_of({**LLAMA, "quantization_config": qc})
    check_tensors(info, BASE_TENSORS | {LAYER + "self_attn.q_proj.qweight"}, "d")
    assert "gptq-desc-act-no-gidx" in info.codes()
    info = info_of({**LLAMA, "quantization_config": qc})
    check_tensors(info, BASE_TENSORS | {LAYER + "self_attn.q_proj.g_idx"}, "d")
    assert "gptq-desc-act-no-gidx" not in info.codes()
    with pytest.raises(ModelLoadError, match="GPTQ weights are not supported"):
        require_loadable(info, "c")
    # AutoGPTQ's legacy quantize_config.json
    info = info_of(LLAMA, quant_files={"quantize_config.json": {"bits": 4, "desc_act": True}})
    check_tensors(info, set(BASE_TENSORS), "d")
    assert "gptq-desc-act-no-gidx" in info.codes()


def test_awq_both_layouts():
    info = info_of({**LLAMA, "quantization_config": {"quant_method": "awq", "bits": 4,
                                                     "group_size": 128}})
    assert "awq" in info.codes() and info.quant.group_size == 128
    legacy = {"quant_method": "awq", "w_bit": 4, "q_group_size": 64, "zero_point": True}
    info = info_of(LLAMA, quant_files={"quant_config.json": legacy})
    assert "awq" in info.codes() and info.quant.group_size == 64
    assert "bits=4" in info.warnings[0].message
    with pytest.raises(ModelLoadError, match="AWQ"):
        require_loadable(info, "c")


def test_mxfp4_detected():
    info = info_of({**LLAMA, "quantization_config": {"quant_method": "mxfp4"}})
    assert info.codes() == ["mxfp4"] and info.quant.group_size == 32
    assert "GGUF" in info.warnings[0].message
    with pytest.raises(ModelLoadError, match="MXFP4"):
        require_loadable(info, "c")


# --- other architecture hints --------------------------------------------------------------------

def test_deepseek_mla_ranks():
    info = info_of({**LLAMA, "architectures": ["DeepseekV3ForCausalLM"],
                    "model_type": "deepseek_v3", "kv_lora_rank": 512, "q_lora_rank": 1536})
    assert "mla" in info.codes()
    assert "kv_lora_rank=512" in info.warnings[info.codes().index("mla")].message
    with pytest.raises(ModelLoadError, match="MLA"):
        require_loadable(info, "c")


def test_vision_config_is_skipped_with_a_warning():
    cfg = {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
           "text_config": GEMMA, "vision_config": {"model_type": "siglip_vision_model"}}
    info = info_of(cfg)
    assert info.codes() == ["vision-skipped"] and "siglip_vision_model" in info.warnings[0].message
    assert info.arch == "gemma3" and "vision_tower." in info.skip_prefixes
    assert require_loadable(info, "c").n_layer == 6


def test_sentencepiece_only_tokenizer_gets_the_actionable_message(tmp_path):
    info = info_of(LLAMA, files={"config.json", "model.safetensors", "tokenizer.model"})
    assert info.codes() == ["tokenizer-sentencepiece-only"]
    msg = info.warnings[0].message
    assert "tokenizer.json" in msg and "save_pretrained" in msg and "convert_hf_to_gguf" in msg
    # and asking for the tokenizer of such a directory raises that message as the error
    from impdiff.engine.safetensors_loader import load_hf_tokenizer

    (tmp_path / "tokenizer.model").write_bytes(b"\x0a\x00")
    with pytest.raises(ModelLoadError, match="only tokenizer.model"):
        load_hf_tokenizer(tmp_path, 128)


def test_unreadable_tokenizer_json_is_one_line(tmp_path):
    from impdiff.engine.hf_tokenizer import HFTokenizer

    (tmp_path / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": ')
    with pytest.raises(ModelLoadError, match="tokenizer.json: cannot be read by the tokenizers"):
        HFTokenizer.from_dir(tmp_path, 128)
    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(ModelLoadError, match="no tokenizer.json"):
        HFTokenizer.from_dir(tmp_path, 128)


def test_gemma_layer_types_and_scales():
    cfg = require_loadable(info_of(GEMMA), "c")
    assert cfg.is_swa == (True,) * 5 + (False,)
    assert cfg.attn_scale == 32 ** -0.5 and cfg.rope_base_swa == 1e4 and cfg.spec.embed_scale
    types = ["full_attention"] + ["sliding_attention"] * 5
    cfg = require_loadable(info_of({**GEMMA, "layer_types": types}), "c")
    assert cfg.is_swa == (False,) + (True,) * 5
    with pytest.raises(ModelLoadError, match="layer_types"):
        info_of({**GEMMA, "layer_types": ["full_attention"]})


@pytest.mark.parametrize("key,value,fragment", [
    ("hidden_size", None, "missing 'hidden_size'"),
    ("hidden_size", "64", "'hidden_size' must be an integer"),
    ("num_key_value_heads", 3, "not a multiple"),
    ("rms_norm_eps", "x", "'rms_norm_eps' must be a number"),
    ("architectures", "LlamaForCausalLM", "'architectures' must be a list"),
])
def test_bad_values_are_one_line_errors(key, value, fragment):
    cfg = dict(LLAMA)
    if value is None:
        del cfg[key]
    else:
        cfg[key] = value
    with pytest.raises(ModelLoadError, match=fragment):
        require_loadable(info_of(cfg), "cfg/config.json")


def test_activation_mismatch_blocks():
    with pytest.raises(ModelLoadError, match="activation 'relu'"):
        require_loadable(info_of({**LLAMA, "hidden_act": "relu"}), "c")


def test_read_json_errors_name_file_and_position(tmp_path):
    p = tmp_path / "config.json"
    p.write_text('{"a": 1,,}')
    with pytest.raises(ModelLoadError, match=r"config.json: not valid JSON .* line 1 column 9"):
        read_json(p)
    p.write_text('{"a": 1, "a": 2}')
    with pytest.raises(ModelLoadError, match="key 'a' appears twice"):
        read_json(p)
    p.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(ModelLoadError, match="not UTF-8"):
        read_json(p)


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma3"])
def test_config_from_gguf_metadata_round_trips(arch, synth_model):
    """config.json written by `impdiff convert` gives back exactly config_from_gguf's config."""
    from impdiff.convert import gguf_hf_config

    gf = GGUFFile(synth_model(arch))
    cfg = config_from_gguf(gf)
    hf = json.loads(json.dumps(gguf_hf_config(gf, cfg)))
    assert require_loadable(info_of(hf), "c") == cfg
    # and a Gemma with linear rope scaling on global layers
    if arch == "gemma3":
        scaled = replace(cfg, rope_freq_scale=0.125, layers=())  # layers: recomputed
        hf = json.loads(json.dumps(gguf_hf_config(gf, scaled)))
        assert require_loadable(info_of(hf), "c") == scaled


# --- the tokenizer.json that `impdiff convert` writes from a GGUF vocabulary ----------------------

TEXTS = ["Hello world", " leading space", "multiple   spaces\n\nand\ttabs",
         "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n",
         "naïve café — 日本語のテキスト 🤖🎉", "<table><tr><td>x</td></tr></table>",
         "code:\n    def f(x):\n        return x**2\n", "\u200b\ufeffodd", "a" * 300,
         "1234567890 3.14159", "<unused12> <bos> </s> <eos>"]


@pytest.mark.slow
def test_tokenizer_json_from_gguf_matches_the_gguf_tokenizer(tmp_path):
    """Gemma 3's SPM vocabulary as tokenizer.json: the same ids as the engine's GGUF tokenizer
    (which matches llama.cpp) for special, user-defined, byte-fallback and long texts."""
    from impdiff.convert import tokenizer_files
    from impdiff.engine.hf_tokenizer import HFTokenizer
    from impdiff.engine.tokenizer import Tokenizer
    from impdiff.haystack import build_haystack

    from .conftest import real_model_or_skip

    g = Tokenizer.from_gguf(GGUFFile(real_model_or_skip("gemma3-270m")))
    for name, text in tokenizer_files(g).items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    h = HFTokenizer.from_dir(tmp_path, g.vocab_size)
    assert (h.bos_id, h.eos_id, h.add_bos, h.eog_ids) == (g.bos_id, g.eos_id, g.add_bos,
                                                         g.eog_ids)
    for text in TEXTS:
        for parse_special in (False, True):
            for add_special in (True, False):
                assert h.encode(text, add_special, parse_special) == \
                    g.encode(text, add_special, parse_special), (text, parse_special)
    hs = build_haystack(g, 512)
    assert h.encode(hs.text) == hs.ids
    assert h.decode(hs.ids) == g.decode(hs.ids)
