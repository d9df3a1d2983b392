"""The HF SafeTensors loader: equivalence with the GGUF path, dtypes, shards, and a corpus of
malformed checkpoints that must each give one clear ModelLoadError line or a documented warning
(never a traceback, a hang or a silent wrong load), plus a hypothesis fuzz of the header parser.
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import struct
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from impdiff.engine.errors import ModelLoadError
from impdiff.engine.generate import Session
from impdiff.engine.loader import load_gguf_model, load_model
from impdiff.engine.safetensors_loader import DTYPE_SIZES, LoadStats, read_header
from impdiff.testing.synthetic import PRESETS, write_hf_dir

TINY = replace(PRESETS["llama"], n_vocab=64, n_embd=32, n_layer=1, n_head=2, n_head_kv=1,
               head_dim=16, n_ff=64)
Q = "model.layers.0.self_attn.q_proj"


# --------------------------------------------------------------------------------------------
# raw safetensors files
# --------------------------------------------------------------------------------------------

def read_raw(path: Path) -> tuple[dict, bytes]:
    b = path.read_bytes()
    n = struct.unpack("<Q", b[:8])[0]
    return json.loads(b[8:8 + n]), b[8 + n:]


def write_raw(path: Path, header, data: bytes, length: int | None = None) -> None:
    hb = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(hb) if length is None else length
    path.write_bytes(struct.pack("<Q", n) + hb + data)


def edit_header(path: Path, fn) -> None:
    h, data = read_raw(path)
    fn(h)
    write_raw(path, h, data)


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def edit_tensors(path: Path, fn) -> None:
    t = load_tensors(path)
    fn(t)
    save_tensors(path, t)


# --------------------------------------------------------------------------------------------
# base directories (built once per module)
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    from impdiff.convert import quantize_hf_dir, write_safetensors

    root = tmp_path_factory.mktemp("st-bases")
    plain = write_hf_dir(TINY, root / "plain")
    sharded = root / "sharded"
    shutil.copytree(plain, sharded)
    (sharded / "model.safetensors").unlink()
    write_safetensors(sharded, load_tensors(plain / "model.safetensors"), shard_size=20_000)
    ct = quantize_hf_dir(plain, root / "ct", "compressed-tensors", calib_tokens=8).out
    mo = quantize_hf_dir(plain, root / "mo", "modelopt", calib_tokens=8).out
    return {"plain": plain, "sharded": sharded, "ct": ct, "mo": mo}


def test_hf_dirs_give_the_gguf_models_logits(synth_model, tmp_path):
    """write_hf_dir's weights (un-permuted llama Q/K, Gemma norms - 1) load back to the same
    model: identical config, logits equal to float32 rounding."""
    ids = list(range(1, 40))
    for arch in ("llama", "qwen3", "gemma3"):
        a = load_gguf_model(synth_model(arch), "cpu")
        b = load_model(write_hf_dir(PRESETS[arch], tmp_path / arch), "cpu")
        assert a.cfg == b.cfg
        la = Session(a.model, n_ctx=64).eval(ids)
        lb = Session(b.model, n_ctx=64).eval(ids)
        assert torch.allclose(la, lb, atol=1e-4, rtol=1e-5), arch
        assert b.stats.format == "safetensors F32" and b.stats.tensors > 0


def test_sharded_equals_single(bases):
    a, b = load_model(bases["plain"], "cpu"), load_model(bases["sharded"], "cpu")
    assert b.stats.files > 1
    for x, y in zip(a.model.layers[0].__dict__.values(), b.model.layers[0].__dict__.values()):
        if isinstance(x, torch.Tensor):
            assert torch.equal(x, y)


def test_load_model_dispatches_on_the_path(bases, synth_model):
    assert type(load_model(bases["plain"] / "config.json", "cpu")).__name__ == "HFLoadedModel"
    assert type(load_model(bases["plain"] / "model.safetensors", "cpu")).__name__ == \
        "HFLoadedModel"
    assert type(load_model(synth_model("llama"), "cpu")).__name__ == "LoadedModel"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float8_e4m3fn,
                                   torch.float8_e5m2, torch.float64])
def test_weight_dtypes_load_as_their_values(bases, tmp_path, dtype):
    d = tmp_path / "m"
    shutil.copytree(bases["plain"], d)
    stored = {}

    def cast(t):
        for k in list(t):
            if k.endswith(("proj.weight",)):
                t[k] = t[k].to(dtype)
                stored[k] = t[k].to(torch.float32)

    edit_tensors(d / "model.safetensors", cast)
    m = load_model(d, "cpu")
    w = m.model.layers[0]
    from impdiff.engine.safetensors_loader import permute_llama_qk

    assert torch.equal(w.wv, stored["model.layers.0.self_attn.v_proj.weight"])
    assert torch.equal(w.wq, permute_llama_qk(stored[Q + ".weight"], TINY.n_head))
    if dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        assert m.stats.fp8_plain_weights == 7


def test_nvfp4_dirs_load_with_counters(bases):
    for key, layout in (("ct", "compressed-tensors"), ("mo", "modelopt")):
        m = load_model(bases[key], "cpu")
        s = m.stats
        assert s.format == f"NVFP4 ({layout})"
        assert s.nvfp4_weights == 7 and s.input_scale_unused == 7
        assert "7 input scales loaded but unused" in s.summary_line()
        assert "input_scale_unused" in [w.code for w in s.warnings]


def test_llama3_rope_table_reaches_the_model(bases, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(bases["plain"], d)
    c = json.loads((d / "config.json").read_text())
    c["rope_scaling"] = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    (d / "config.json").write_text(json.dumps(c))
    m = load_model(d, "cpu")
    assert m.model.rope_freqs is not None and m.model.rope_freqs.shape == (TINY.head_dim // 2,)
    assert m.model.rope_freqs[0] == 1.0 and m.model.rope_freqs[-1] == 8.0
    assert "rope-llama3" in [w.code for w in m.warnings]


def test_gemma3_conditional_generation_loads_the_text_part(tmp_path):
    """The multimodal class: text weights under language_model.*, vision tower skipped."""
    spec = replace(PRESETS["gemma3"], n_layer=6, n_vocab=64, n_embd=64, n_head=2, head_dim=32,
                   n_ff=128)
    plain = write_hf_dir(spec, tmp_path / "plain")
    mm = tmp_path / "mm"
    mm.mkdir()
    t = load_tensors(plain / "model.safetensors")
    out = {"language_model." + k: v for k, v in t.items()}
    out["vision_tower.vision_model.embeddings.patch_embedding.weight"] = torch.ones(4, 3)
    out["multi_modal_projector.mm_input_projection_weight"] = torch.ones(2, 2)
    save_tensors(mm / "model.safetensors", out)
    text = json.loads((plain / "config.json").read_text())
    (mm / "config.json").write_text(json.dumps({
        "architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
        "text_config": text, "vision_config": {"model_type": "siglip_vision_model"}}))
    a, b = load_model(plain, "cpu"), load_model(mm, "cpu")
    assert a.cfg == b.cfg and b.stats.skipped_tensors == 2
    assert "vision-skipped" in [w.code for w in b.warnings]
    ids = list(range(1, 20))
    assert torch.equal(Session(a.model, n_ctx=32).eval(ids), Session(b.model, n_ctx=32).eval(ids))


def test_summary_line_counts_every_event():
    s = LoadStats(format="NVFP4 (modelopt)", files=2, tensors=10, bytes=2_000_000)
    s.event("zero_global_scale", "a.weight_scale_2 = 0")
    s.event("nonfinite_global_scale", "b.weight_scale_2 = nan")
    s.event("nonfinite_block_scales", "c: 3 NaN block scales")
    line = s.summary_line()
    assert "1 zero / 1 non-finite" in line and "1 NaN block scales zeroed" in line
    assert "3 warning(s)" in line and "\n" not in line


# --------------------------------------------------------------------------------------------
# the malformed corpus
# --------------------------------------------------------------------------------------------

ST = "model.safetensors"
SHARD1 = "model-00001-of-{n:05d}.safetensors"


def _first_two_same_shape(h):
    seen = {}
    for k, e in h.items():
        if k == "__metadata__":
            continue
        key = (e["dtype"], tuple(e["shape"]))
        if key in seen:
            return seen[key], k
        seen[key] = k
    raise AssertionError("no two tensors of one shape")


def _shift_after(h, pos, by):
    for k, e in h.items():
        if k != "__metadata__" and e["data_offsets"][0] >= pos:
            e["data_offsets"] = [e["data_offsets"][0] + by, e["data_offsets"][1] + by]


def _gap(d):
    p = d / ST
    h, data = read_raw(p)
    e = h[Q + ".weight"]
    start = e["data_offsets"][0]
    _shift_after(h, start, 16)
    write_raw(p, h, data[:start] + b"\0" * 16 + data[start:])


def _overlap(d):
    def fn(h):
        a, b = _first_two_same_shape(h)
        h[b]["data_offsets"] = list(h[a]["data_offsets"])
    edit_header(d / ST, fn)


def _swap_pair(d):
    def fn(h):
        a, b = Q + ".weight", "model.layers.0.input_layernorm.weight"
        h[a]["data_offsets"], h[b]["data_offsets"] = h[b]["data_offsets"], h[a]["data_offsets"]
    edit_header(d / ST, fn)


def _nan(value):
    def mutate(d):
        def fn(t):
            t[Q + ".weight"][3, 5] = value
        edit_tensors(d / ST, fn)
    return mutate


def _tensor_edit(fn):
    return lambda d: edit_tensors(d / ST, fn)


def _config_edit(fn):
    def mutate(d):
        c = json.loads((d / "config.json").read_text())
        fn(c)
        (d / "config.json").write_text(json.dumps(c))
    return mutate


def _index_edit(fn):
    def mutate(d):
        p = d / "model.safetensors.index.json"
        idx = json.loads(p.read_text())
        fn(idx)
        p.write_text(json.dumps(idx))
    return mutate


def _quant_config_edit(fn):
    def mutate(d):
        p = d / "hf_quant_config.json"
        q = json.loads(p.read_text())
        fn(q["quantization"])
        p.write_text(json.dumps(q))
    return mutate


def _shard_names(d):
    return sorted(p.name for p in d.glob("model-*.safetensors"))


def _write_scale(name, value_fn):
    """Replace tensor `name` of an NVFP4 dir's model.safetensors."""
    def mutate(d):
        def fn(t):
            t[name] = value_fn(t[name])
        edit_tensors(d / ST, fn)
    return mutate


def _drop(name):
    return _tensor_edit(lambda t: t.pop(name))


def _set_header_len(n):
    def mutate(d):
        b = (d / ST).read_bytes()
        (d / ST).write_bytes(struct.pack("<Q", n) + b[8:])
    return mutate


def _replace_header(hb: bytes):
    def mutate(d):
        _, data = read_raw(d / ST)
        write_raw(d / ST, hb, data)
    return mutate


def _entry(field, value, name=Q + ".weight"):
    def mutate(d):
        def fn(h):
            if value is _DELETE:
                del h[name][field]
            else:
                h[name][field] = value
        edit_header(d / ST, fn)
    return mutate


_DELETE = object()
MO_Q, CT_Q = Q + ".", Q + "."

# (id, base, mutation, expected) with expected ("error", fragments) or ("warning", code)
CASES = [
    # --- the file itself
    ("empty-file", "plain", lambda d: (d / ST).write_bytes(b""), ("error", [ST, "too short"])),
    ("five-bytes", "plain", lambda d: (d / ST).write_bytes(b"\x10\0\0\0\0"),
     ("error", [ST, "too short"])),
    ("truncated-data", "plain", lambda d: (d / ST).write_bytes((d / ST).read_bytes()[:-100]),
     ("error", [ST, "past the data section"])),
    ("truncated-in-header", "plain", lambda d: (d / ST).write_bytes((d / ST).read_bytes()[:60]),
     ("error", [ST, "runs past the end"])),
    ("header-len-u64-max", "plain", _set_header_len(2**64 - 1), ("error", [ST, "exceeds"])),
    ("header-len-overflow-wrap", "plain", _set_header_len(2**64 - 4), ("error", [ST, "exceeds"])),
    ("header-len-2^63", "plain", _set_header_len(2**63), ("error", [ST, "exceeds"])),
    ("header-len-past-eof", "plain", lambda d: _set_header_len((d / ST).stat().st_size)(d),
     ("error", [ST, "runs past the end"])),
    ("header-len-zero", "plain", _set_header_len(0), ("error", [ST, "too short for a JSON"])),
    ("header-len-short", "plain", _set_header_len(40), ("error", [ST, "not valid JSON"])),
    ("header-garbage", "plain", _replace_header(b"\x01\x02garbage{]"),
     ("error", [ST, "not valid JSON"])),
    ("header-not-utf8", "plain", _replace_header(b'{"\xff\xfe": 1}'), ("error", [ST, "not UTF-8"])),
    ("header-array", "plain", _replace_header(b"[1, 2, 3]"), ("error", [ST, "JSON object"])),
    ("header-deep-nesting", "plain", _replace_header(b"[" * 100000 + b"]" * 100000),
     ("error", [ST, "nested too deeply"])),
    ("duplicate-tensor-key", "plain",
     _replace_header(b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
                     b'"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'),
     ("error", [ST, "'a' twice"])),
    ("empty-tensor-name", "plain",
     lambda d: edit_header(d / ST, lambda h: h.__setitem__("", h.pop(Q + ".weight"))),
     ("error", [ST, "empty name"])),
    ("entry-not-object", "plain",
     lambda d: edit_header(d / ST, lambda h: h.__setitem__(Q + ".weight", 7)),
     ("error", [ST, Q + ".weight", "entry must be an object"])),
    ("dtype-missing", "plain", _entry("dtype", _DELETE), ("error", [Q + ".weight", "'dtype'"])),
    ("dtype-unknown", "plain", _entry("dtype", "F33"), ("error", [Q + ".weight", "'F33'"])),
    ("dtype-subbyte", "plain", _entry("dtype", "F4"), ("error", [Q + ".weight", "'F4'"])),
    ("dtype-not-string", "plain", _entry("dtype", 4), ("error", [Q + ".weight", "'dtype'"])),
    ("shape-negative", "plain", _entry("shape", [-32, -32]),
     ("error", [Q + ".weight", "non-negative integers"])),
    ("shape-float", "plain", _entry("shape", [32.0, 32]),
     ("error", [Q + ".weight", "non-negative integers"])),
    ("shape-bool", "plain", _entry("shape", [True, 32]),
     ("error", [Q + ".weight", "non-negative integers"])),
    ("shape-not-list", "plain", _entry("shape", "32x32"),
     ("error", [Q + ".weight", "'shape'"])),
    ("shape-9-dims", "plain", _entry("shape", [1] * 7 + [32, 32]),
     ("error", [Q + ".weight", "9 dimensions"])),
    ("shape-overflow", "plain", _entry("shape", [2**62, 2**62]),
     ("error", [Q + ".weight", "needs"])),
    ("offsets-missing", "plain", _entry("data_offsets", _DELETE),
     ("error", [Q + ".weight", "data_offsets"])),
    ("offsets-three", "plain", _entry("data_offsets", [0, 4, 8]),
     ("error", [Q + ".weight", "data_offsets"])),
    ("offsets-negative", "plain", _entry("data_offsets", [-4096, 0]),
     ("error", [Q + ".weight", "data_offsets"])),
    ("offsets-swapped", "plain",
     lambda d: edit_header(d / ST, lambda h: h[Q + ".weight"].__setitem__(
         "data_offsets", h[Q + ".weight"]["data_offsets"][::-1])),
     ("error", [Q + ".weight", "swapped"])),
    ("offsets-out-of-bounds", "plain",
     lambda d: edit_header(d / ST, lambda h: h[Q + ".weight"].__setitem__(
         "data_offsets", [10**9, 10**9 + 4096])),
     ("error", [Q + ".weight", "past the data section"])),
    ("offsets-huge", "plain", _entry("data_offsets", [0, 10**30]),
     ("error", [Q + ".weight", "past the data section"])),
    ("offsets-of-two-tensors-swapped", "plain", _swap_pair,
     ("error", ["holds", "needs"])),
    ("size-shape-mismatch", "plain", _entry("shape", [32, 31]),
     ("error", [Q + ".weight", "holds 4096 bytes", "needs 3968"])),
    ("size-dtype-mismatch", "plain", _entry("dtype", "F16"),
     ("error", [Q + ".weight", "× F16 needs 2048"])),
    ("overlapping-tensors", "plain", _overlap, ("error", [ST, "overlaps"])),
    ("gap-between-tensors", "plain", _gap, ("error", [ST, "unused bytes before"])),
    ("trailing-bytes", "plain", lambda d: (d / ST).write_bytes((d / ST).read_bytes() + b"\0" * 8),
     ("error", [ST, "8 bytes after the last tensor"])),
    ("metadata-not-strings", "plain",
     lambda d: edit_header(d / ST, lambda h: h.__setitem__("__metadata__", {"format": 1})),
     ("error", [ST, "__metadata__"])),
    ("weights-nan", "plain", _nan(float("nan")), ("error", [Q + ".weight", "NaN/Inf"])),
    ("weights-inf", "plain", _nan(float("inf")), ("error", [Q + ".weight", "NaN/Inf"])),
    ("weights-int32", "plain",
     _tensor_edit(lambda t: t.__setitem__(Q + ".weight", t[Q + ".weight"].to(torch.int32))),
     ("error", [Q + ".weight", "I32"])),
    ("weights-u8-unquantised", "plain",
     _tensor_edit(lambda t: t.__setitem__(Q + ".weight", t[Q + ".weight"].to(torch.uint8))),
     ("error", [Q + ".weight", "U8", "NVFP4"])),
    ("weight-transposed", "plain",
     _tensor_edit(lambda t: t.__setitem__("model.layers.0.mlp.up_proj.weight",
                                          t["model.layers.0.mlp.up_proj.weight"].T)),
     ("error", ["mlp.up_proj.weight", "[32, 64]", "expected [64, 32]"])),
    ("missing-q-proj", "plain", _drop(Q + ".weight"),
     ("error", ["blk.0.attn_q.weight", "missing"])),
    ("missing-embedding", "plain", _drop("model.embed_tokens.weight"),
     ("error", ["model.embed_tokens.weight", "missing"])),
    ("quant-tensor-without-config", "plain",
     _tensor_edit(lambda t: t.__setitem__(Q + ".weight_scale", torch.ones(32, 2))),
     ("error", [Q + ".weight_scale", "declares no quantisation"])),
    ("unknown-extra-tensor", "plain",
     _tensor_edit(lambda t: t.__setitem__("model.layers.0.mystery.weight", torch.ones(3))),
     ("warning", "unused-tensor")),
    ("layer-beyond-config", "plain",
     _tensor_edit(lambda t: t.__setitem__("model.layers.7.mlp.up_proj.weight",
                                          t["model.layers.0.mlp.up_proj.weight"].clone())),
     ("error", ["model.layers.7.mlp.up_proj.weight", "layer 7", "1 layers"])),
    ("norm-wrong-shape", "plain",
     _tensor_edit(lambda t: t.__setitem__("model.norm.weight", torch.ones(31))),
     ("error", ["model.norm.weight", "[31]", "expected [32]"])),
    ("bias-present", "plain",
     _tensor_edit(lambda t: t.__setitem__(Q + ".bias", torch.zeros(32))),
     ("error", ["bias", "no bias path"])),
    # --- config.json
    ("config-missing", "plain", lambda d: (d / "config.json").unlink(),
     ("error", ["no config.json"])),
    ("config-bad-json", "plain", lambda d: (d / "config.json").write_text('{"hidden_size": 32,'),
     ("error", ["config.json", "not valid JSON", "line 1"])),
    ("config-duplicate-key", "plain",
     lambda d: (d / "config.json").write_text('{"hidden_size": 32, "hidden_size": 64}'),
     ("error", ["config.json", "'hidden_size' appears twice"])),
    ("config-array", "plain", lambda d: (d / "config.json").write_text("[]"),
     ("error", ["config.json", "JSON object"])),
    ("config-hidden-size-string", "plain", _config_edit(lambda c: c.update(hidden_size="32")),
     ("error", ["config.json", "'hidden_size' must be an integer"])),
    ("config-vocab-mismatch", "plain", _config_edit(lambda c: c.update(vocab_size=65)),
     ("error", ["has shape [64, 32], expected [65, 32] from config.json"])),
    ("config-unknown-arch", "plain",
     _config_edit(lambda c: c.update(architectures=["FalconForCausalLM"], model_type="falcon")),
     ("error", ["config.json", "'FalconForCausalLM' is not supported"])),
    ("config-rope-yarn", "plain",
     _config_edit(lambda c: c.update(rope_scaling={"rope_type": "yarn", "factor": 4})),
     ("error", ["config.json", "yarn"])),
    ("config-multi-arch", "plain",
     _config_edit(lambda c: c.update(architectures=["LlamaForCausalLM", "Extra"])),
     ("warning", "arch-multi")),
    ("no-safetensors", "plain", lambda d: (d / ST).unlink(),
     ("error", ["no model.safetensors"])),
    ("two-files-no-index", "plain",
     lambda d: [shutil.copyfile(d / ST, d / "other.safetensors"),
                (d / ST).rename(d / "first.safetensors")],
     ("error", ["2 .safetensors files but no model.safetensors.index.json"])),
    ("safetensors-is-directory", "plain",
     lambda d: (d / ST).unlink() or (d / ST).mkdir(), ("error", [ST, "is a directory"])),
    # --- shards and the index
    ("missing-shard", "sharded", lambda d: (d / _shard_names(d)[-1]).unlink(),
     ("error", ["shard is missing", "e.g. '"])),
    ("index-bad-json", "sharded",
     lambda d: (d / "model.safetensors.index.json").write_text("{weight_map"),
     ("error", ["model.safetensors.index.json", "not valid JSON"])),
    ("index-empty-map", "sharded", _index_edit(lambda i: i.update(weight_map={})),
     ("error", ["weight_map", "non-empty"])),
    ("index-map-not-object", "sharded", _index_edit(lambda i: i.update(weight_map=[1])),
     ("error", ["weight_map"])),
    ("index-wrong-shard", "sharded",
     lambda d: _index_edit(lambda i: i["weight_map"].__setitem__(
         "model.norm.weight", _shard_names(d)[0] if i["weight_map"]["model.norm.weight"]
         != _shard_names(d)[0] else _shard_names(d)[1]))(d),
     ("error", ["'model.norm.weight'", "does not contain it"])),
    ("index-path-traversal", "sharded",
     _index_edit(lambda i: i["weight_map"].__setitem__("model.norm.weight", "../x.safetensors")),
     ("error", ["'../x.safetensors'", "not a plain file name"])),
    ("index-shard-not-string", "sharded",
     _index_edit(lambda i: i["weight_map"].__setitem__("model.norm.weight", 3)),
     ("error", ["weight_map['model.norm.weight']", "file name"])),
    ("index-unlisted-tensor", "sharded",
     _index_edit(lambda i: i["weight_map"].pop("model.layers.0.mlp.up_proj.weight") and None),
     ("error", ["blk.0.ffn_up.weight", "missing"])),
    ("index-unlisted-extra", "sharded",
     lambda d: edit_tensors(d / _shard_names(d)[0],
                            lambda t: t.__setitem__("model.layers.0.extra.weight", torch.ones(2))),
     ("warning", "index-unlisted")),
    ("index-total-size-wrong", "sharded",
     _index_edit(lambda i: i["metadata"].__setitem__("total_size", 1)),
     ("info", "index-total-size")),
    ("truncated-shard", "sharded",
     lambda d: (d / _shard_names(d)[0]).write_bytes((d / _shard_names(d)[0]).read_bytes()[:-9]),
     ("error", ["model-00001-of-", "past the data section"])),
    # --- NVFP4, compressed-tensors
    ("ct-global-zero", "ct", _write_scale(CT_Q + "weight_global_scale", lambda t: t * 0),
     ("warning", "zero_global_scale")),
    ("ct-global-nan", "ct", _write_scale(CT_Q + "weight_global_scale", lambda t: t * math.nan),
     ("warning", "nonfinite_global_scale")),
    ("ct-global-inf", "ct", _write_scale(CT_Q + "weight_global_scale", lambda t: t * math.inf),
     ("warning", "nonfinite_global_scale")),
    ("ct-global-subnormal", "ct",
     _write_scale(CT_Q + "weight_global_scale", lambda t: torch.full_like(t, 1e-44)),
     ("warning", "nonfinite_global_scale")),
    ("ct-global-two-values", "ct",
     _write_scale(CT_Q + "weight_global_scale", lambda t: torch.cat([t, t])),
     ("error", ["weight_global_scale", "expected one value"])),
    ("ct-global-int", "ct",
     _write_scale(CT_Q + "weight_global_scale", lambda t: t.to(torch.int32)),
     ("error", ["weight_global_scale", "dtype I32"])),
    ("ct-scale-u8", "ct", _write_scale(CT_Q + "weight_scale", lambda t: t.view(torch.uint8)),
     ("error", [Q, "block scales have dtype U8", "MXFP4"])),
    ("ct-scale-f16", "ct", _write_scale(CT_Q + "weight_scale", lambda t: t.to(torch.float16)),
     ("error", [Q, "dtype F16, expected F8_E4M3"])),
    ("ct-scale-e5m2", "ct",
     _write_scale(CT_Q + "weight_scale", lambda t: t.float().to(torch.float8_e5m2)),
     ("error", [Q, "F8_E5M2"])),
    ("ct-scale-group-32", "ct", _write_scale(CT_Q + "weight_scale", lambda t: t[:, :1]),
     ("error", [Q, "group size 32"])),
    ("ct-scale-transposed", "ct", _write_scale(CT_Q + "weight_scale", lambda t: t.T.contiguous()),
     ("error", [Q, "transposed"])),
    ("ct-packed-wrong-rows", "ct", _write_scale(CT_Q + "weight_packed", lambda t: t[:16]),
     ("error", [Q, "block scales have shape"])),
    ("ct-packed-and-scale-wrong-rows", "ct",
     lambda d: edit_tensors(d / ST, lambda t: t.update({
         CT_Q + "weight_packed": t[CT_Q + "weight_packed"][:16],
         CT_Q + "weight_scale": t[CT_Q + "weight_scale"][:16]})),
     ("error", [Q, "dequantise to [16, 32], expected [32, 32]"])),
    ("ct-packed-int8", "ct", _write_scale(CT_Q + "weight_packed", lambda t: t.view(torch.int8)),
     ("error", [Q, "codes have dtype I8"])),
    ("ct-missing-global", "ct", _drop(CT_Q + "weight_global_scale"),
     ("error", [Q, "lacks", "weight_global_scale"])),
    ("ct-missing-scale", "ct", _drop(CT_Q + "weight_scale"),
     ("error", [Q, "lacks", "weight_scale"])),
    ("ct-nan-block-scale", "ct",
     _write_scale(CT_Q + "weight_scale", lambda t: torch.where(
         torch.arange(t.numel()).view(t.shape) == 0, torch.tensor(0x7F, dtype=torch.uint8),
         t.view(torch.uint8)).view(torch.float8_e4m3fn)),
     ("warning", "nonfinite_block_scales")),
    ("ct-negative-global", "ct", _write_scale(CT_Q + "weight_global_scale", lambda t: -t),
     ("warning", "negative_global_scale")),
    ("ct-config-group-32", "ct", _config_edit(lambda c: c["quantization_config"][
        "config_groups"]["group_0"]["weights"].update(group_size=32)),
     ("error", ["config.json", "group_size 32"])),
    ("ct-config-int4", "ct", _config_edit(lambda c: c["quantization_config"].update(
        format="pack-quantized", config_groups={})),
     ("error", ["config.json", "pack-quantized is not supported"])),
    ("ct-input-scale-vector", "ct",
     _write_scale(CT_Q + "input_global_scale", lambda t: torch.ones(4)),
     ("error", ["input_global_scale", "must be one float"])),
    # --- NVFP4, ModelOpt
    ("mo-scale2-zero", "mo", _write_scale(MO_Q + "weight_scale_2", lambda t: t * 0),
     ("warning", "zero_global_scale")),
    ("mo-scale2-nan", "mo", _write_scale(MO_Q + "weight_scale_2", lambda t: t * math.nan),
     ("warning", "nonfinite_global_scale")),
    ("mo-scale2-neg-inf", "mo", _write_scale(MO_Q + "weight_scale_2", lambda t: t * -math.inf),
     ("warning", "nonfinite_global_scale")),
    ("mo-scale2-overflow", "mo",
     _write_scale(MO_Q + "weight_scale_2", lambda t: torch.full_like(t, 3e38)),
     ("error", [Q, "non-finite values", "overflows"])),
    ("mo-scale-u8", "mo", _write_scale(MO_Q + "weight_scale", lambda t: t.view(torch.uint8)),
     ("error", [Q, "block scales have dtype U8"])),
    ("mo-weight-bf16-with-scale", "mo",
     _write_scale(MO_Q + "weight", lambda t: t.to(torch.bfloat16)),
     ("error", [Q, "codes have dtype BF16"])),
    ("mo-missing-scale2", "mo", _drop(MO_Q + "weight_scale_2"),
     ("error", [Q, "lacks", "weight_scale_2"])),
    ("mo-missing-block-scale", "mo", _drop(MO_Q + "weight_scale"),
     ("error", [Q, "lacks", "weight_scale"])),
    ("mo-input-scale-vector", "mo", _write_scale(MO_Q + "input_scale", lambda t: torch.ones(2)),
     ("error", ["input_scale", "must be one float"])),
    ("mo-quant-config-bad-json", "mo",
     lambda d: (d / "hf_quant_config.json").write_text("{"),
     ("error", ["hf_quant_config.json", "not valid JSON"])),
    ("mo-algo-fp8", "mo",
     lambda d: (d / "hf_quant_config.json").write_text(json.dumps(
         {"quantization": {"quant_algo": "FP8"}})) or _config_edit(
         lambda c: c.pop("quantization_config"))(d),
     ("error", ["quant_algo 'FP8' is not supported"])),
    ("mo-kv-cache-hint", "mo", _quant_config_edit(lambda q: q.update(kv_cache_quant_algo="FP8")),
     ("info", "kv-cache-quant-hint")),
    ("mo-configs-disagree", "mo",
     _config_edit(lambda c: c["quantization_config"].update(kv_cache_quant_algo="FP8")),
     ("warning", "modelopt-config-mismatch")),
]


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout()


def _run_case(base: Path, tmp: Path, case_id: str, mutate):
    d = tmp / case_id
    shutil.copytree(base, d)
    mutate(d)
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(30)  # a hang is a failure, not a stuck test run
    try:
        return load_model(d, "cpu"), None
    except ModelLoadError as exc:
        return None, exc
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_malformed_corpus(bases, tmp_path, capsys):
    """Every malformed checkpoint: one clear ModelLoadError line naming the file/tensor, or a
    documented warning with a finite model. Anything else (another exception type, a timeout)
    fails the test."""
    assert len(CASES) >= 50
    counts = {"error": 0, "warning": 0, "info": 0}
    failures = []
    for case_id, base, mutate, expected in CASES:
        try:
            _check_case(bases[base], tmp_path, case_id, mutate, expected)
        except AssertionError as exc:
            failures.append(str(exc).splitlines()[0])
        else:
            counts[expected[0]] += 1
    assert not failures, "\n".join(failures)
    with capsys.disabled():
        print(f"\nmalformed corpus: {len(CASES)} files/dirs -> {counts['error']} clear errors, "
              f"{counts['warning']} documented warnings, {counts['info']} info notes")


def _check_case(base: Path, tmp_path, case_id, mutate, expected):
    kind, want = expected
    if True:  # (one level, to keep the checks below readable as a block)
        loaded, err = _run_case(base, tmp_path, case_id, mutate)
        if kind == "error":
            assert err is not None, f"{case_id}: loaded silently, expected an error"
            msg = str(err)
            assert "\n" not in msg and len(msg) < 600, f"{case_id}: not one line: {msg!r}"
            for frag in want:
                assert frag in msg, f"{case_id}: {frag!r} not in {msg!r}"
            assert str(tmp_path / case_id) in msg or case_id.startswith("config-bad") \
                or "config.json" in msg, f"{case_id}: message names no file: {msg!r}"
        else:
            assert err is None, f"{case_id}: expected a {kind} ({want}), got error {err}"
            codes = [w.code for w in loaded.stats.warnings]
            assert want in codes, f"{case_id}: {want} not in {codes}"
            levels = {w.code: w.level for w in loaded.stats.warnings}
            assert levels[want] == ("info" if kind == "info" else "warning"), case_id
            for layer in loaded.model.layers:  # guards: nothing non-finite reaches a matmul
                for v in layer.__dict__.values():
                    if isinstance(v, torch.Tensor):
                        assert torch.isfinite(v).all(), case_id
            if want in ("zero_global_scale", "nonfinite_global_scale"):
                assert loaded.model.layers[0].wq.abs().sum() == 0, case_id
                assert Q in " ".join(w.message for w in loaded.stats.warnings), case_id


def test_cli_reports_one_line_and_exit_2(bases, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(bases["plain"], d)
    _set_header_len(2**64 - 4)(d)
    proc = subprocess.run([sys.executable, "-m", "impdiff", "run", "--model", str(d), "-n", "1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "exceeds the 100000000 byte limit" in lines[0]
    assert "Traceback" not in proc.stderr


# --------------------------------------------------------------------------------------------
# hypothesis: the header parser against arbitrary headers and bytes
# --------------------------------------------------------------------------------------------

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_FUZZ = {"cases": 0, "rejected": 0, "accepted": 0}
_TORCH_OK = {"F32", "F16", "BF16", "U8", "I8", "I16", "I32", "I64", "F64", "BOOL",
             "F8_E4M3", "F8_E5M2"}


def _cross_check_accepted(path: Path, parsed) -> None:
    """What read_header accepts, safetensors must load with the same shapes."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        for name, e in parsed.entries.items():
            if e.dtype not in _TORCH_OK:
                continue
            t = f.get_tensor(name)
            assert tuple(t.shape) == e.shape


def _check(path: Path) -> None:
    _FUZZ["cases"] += 1
    try:
        parsed = read_header(path)
    except ModelLoadError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)
        _FUZZ["rejected"] += 1
        return
    _FUZZ["accepted"] += 1
    _cross_check_accepted(path, parsed)


_valid_dtype = st.sampled_from(sorted(_TORCH_OK))
_dtype = st.one_of(_valid_dtype, _valid_dtype, _valid_dtype,
                   st.sampled_from(sorted(DTYPE_SIZES) + ["F4", "X", ""]))
_dim = st.one_of(st.integers(0, 6), st.integers(1, 6), st.integers(1, 6),
                 st.integers(-3, -1), st.just(2**40))
_entry_st = st.fixed_dictionaries({
    "dtype": _dtype,
    "shape": st.lists(_dim, max_size=3),
}, optional={"data_offsets": st.one_of(
    st.lists(st.integers(-2, 200), min_size=2, max_size=2),
    st.lists(st.integers(0, 200), max_size=3))})


@settings(max_examples=400, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(entries=st.dictionaries(st.text(max_size=6), _entry_st, max_size=4),
       contiguous=st.sampled_from([True, True, True, False]),
       extra=st.sampled_from([0, 0, 0, 1, 3]), data=st.data())
def test_fuzz_structured_headers(tmp_path, entries, contiguous, extra, data):
    """Random headers: mostly-valid tensors (offsets laid out contiguously) with random dtypes,
    shapes and stray fields; or arbitrary offsets."""
    pos = 0
    header = {}
    for name, e in entries.items():
        e = dict(e)
        if contiguous:
            try:
                n = math.prod(e["shape"]) * DTYPE_SIZES.get(e["dtype"], 1)
            except TypeError:
                n = 4
            n = max(0, min(n, 512))
            e["data_offsets"] = [pos, pos + n]
            pos += n
        header[name] = e
    if data.draw(st.sampled_from([False, False, True])):
        header["__metadata__"] = data.draw(st.dictionaries(st.text(max_size=3), st.one_of(
            st.text(max_size=3), st.text(max_size=3), st.integers()), max_size=2))
    p = tmp_path / "fuzz.safetensors"
    write_raw(p, header, b"\0" * (pos + extra if contiguous else data.draw(st.integers(0, 300))))
    _check(p)


@settings(max_examples=250, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=6),
       cut=st.one_of(st.none(), st.integers(0, 10**6)),
       length=st.one_of(st.none(), st.integers(0, 2**64 - 1)))
def test_fuzz_byte_mutations(tmp_path, edits, cut, length):
    """Byte flips anywhere in a valid file's header, truncation, a random length prefix."""
    base = tmp_path / "base.safetensors"
    if not base.exists():
        save_tensors(base, {"a": torch.arange(6, dtype=torch.float32).view(2, 3),
                            "b": torch.ones(4, dtype=torch.bfloat16),
                            "c": torch.zeros(2, 8, dtype=torch.uint8)})
    b = bytearray(base.read_bytes())
    n = struct.unpack("<Q", bytes(b[:8]))[0]
    for pos, val in edits:
        b[8 + pos % n] = val
    if length is not None:
        b[:8] = struct.pack("<Q", length)
    if cut is not None:
        b = b[:cut % (len(b) + 1)]
    p = tmp_path / "mut.safetensors"
    p.write_bytes(bytes(b))
    _check(p)


def test_fuzz_count_reported(capsys):
    """Runs after the two fuzz tests (file order): print how many cases were tried."""
    if _FUZZ["cases"] == 0:
        pytest.skip("fuzz tests did not run")
    with capsys.disabled():
        print(f"\nhypothesis header fuzz: {_FUZZ['cases']} cases tried, {_FUZZ['rejected']} "
              f"rejected with one-line ModelLoadError, {_FUZZ['accepted']} accepted and "
              "cross-checked against safetensors")
    assert _FUZZ["rejected"] > 0 and _FUZZ["accepted"] > 0
