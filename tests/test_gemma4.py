"""Gemma 4 in the engine: metadata read as llama.cpp reads it, the ops that differ, clear load
errors, agreement with llama.cpp on synthetic models, and each of the seeds' faults localised."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from impdiff.bracket import BracketConfig, run_bracket
from impdiff.compare.experts import expert_choice, set_metrics
from impdiff.compare.localise import Verdict
from impdiff.diff import run_diff
from impdiff.engine.errors import ModelLoadError
from impdiff.engine.faults import parse_faults
from impdiff.engine.gguf_file import GGUFFile
from impdiff.engine.loader import load_gguf_model
from impdiff.engine.model import apply_rope
from impdiff.taps import TapSelection

from .conftest import requires_llama_cpp


def rewrite(src, dst, drop_keys=(), set_keys=None, drop_tensors=()):
    """A copy of a synthetic GGUF with metadata keys dropped or replaced, tensors dropped."""
    import gguf

    gf = GGUFFile(src)
    arch = gf.architecture
    w = gguf.GGUFWriter(str(dst), arch)
    set_keys = dict(set_keys or {})
    for key, value in gf.metadata.items():
        if key in drop_keys or key.startswith("general.") or key in set_keys:
            continue
        vtype = gguf.GGUFValueType(gf.value_types[key])
        if vtype == gguf.GGUFValueType.ARRAY:
            w.add_key_value(key, value, vtype, sub_type=gguf.GGUFValueType.BOOL
                            if all(isinstance(v, bool) for v in value) else None)
        else:
            w.add_key_value(key, value, vtype)
    for key, (value, vtype) in set_keys.items():
        w.add_key_value(key, value, vtype)
    for name, t in gf.tensors.items():
        if name not in drop_tensors:
            w.add_tensor(name, np.array(t.data).view(np.float32).reshape(t.shape))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    return dst


# --- metadata as llama.cpp reads it -------------------------------------------------------------

def test_dense_config_per_layer(synth_model):
    cfg = load_gguf_model(synth_model("gemma4"), "cpu").cfg
    L = cfg.layers
    assert cfg.is_swa == (True, True, True, False, True, False)
    assert [l.head_dim for l in L] == [64, 64, 64, 128, 64, 128]
    assert [l.n_head_kv for l in L] == [2, 2, 2, 1, 2, 1]
    assert [l.n_rot for l in L] == [64, 64, 64, 128, 64, 128]
    assert {(l.swa, l.rope_base, l.rope_freqs) for l in L} == {(True, 1e4, False),
                                                               (False, 1e6, True)}
    # the last 2 layers share KV: the sliding one reads layer 2, the global one layer 3
    assert [l.kv_layer for l in L] == [0, 1, 2, 3, 2, 3]
    assert [l.n_ff for l in L] == [512] * 4 + [1024] * 2  # double-wide on shared layers
    assert (cfg.attn_scale, cfg.final_logit_softcap, cfg.n_embd_per_layer) == (1.0, 30.0, 32)


def test_moe_config_and_k_equals_v(synth_model):
    m = load_gguf_model(synth_model("gemma4-moe"), "cpu")
    assert m.cfg.moe_layers == list(range(6))
    assert {(l.n_expert, l.n_expert_used, l.n_ff_exp) for l in m.cfg.layers} == {(8, 2, 128)}
    # global layers have no attn_v: V is K's projection
    assert [w.wv is None for w in m.model.layers] == [not s for s in m.cfg.is_swa]


def test_proportional_rope_rotates_a_quarter_at_full_head_frequencies(synth_model):
    model = load_gguf_model(synth_model("gemma4"), "cpu").model
    pos = torch.tensor([0, 5, 300])
    cos, sin, n_rot = model.rope(3, pos)  # layer 3 is global: head dim 128, 1/4 rotated
    assert n_rot == 128
    theta = pos[:, None].double() * 1e6 ** (-torch.arange(0, 128, 2).double() / 128)
    torch.testing.assert_close(cos[:, :16], theta[:, :16].cos().float())
    assert torch.all(cos[:, 16:] == 1) and torch.all(sin[:, 16:].abs() < 1e-20)
    x = torch.randn(3, 1, 128)
    y = apply_rope(x, cos, sin, n_rot, True)
    torch.testing.assert_close(y[..., 16:64], x[..., 16:64])  # unrotated pairs stay put
    torch.testing.assert_close(y[..., 80:], x[..., 80:])
    torch.testing.assert_close(y[0], x[0])


@pytest.mark.parametrize("fault", ["rope-prop-rotated-dims", "rope-prop-pairs",
                                   "rope-dims-global", "rope-base-global"])
def test_rope_faults_change_global_layers_only_after_position_zero(synth_model, fault):
    path = synth_model("gemma4")
    good = load_gguf_model(path, "cpu").model
    bad = load_gguf_model(path, "cpu", parse_faults(fault)).model
    pos = torch.tensor([0, 1, 200])
    x = torch.randn(3, 1, 128)
    ya, yb = (apply_rope(x, *m.rope(3, pos), True) for m in (good, bad))
    torch.testing.assert_close(yb[0], ya[0])
    assert (yb[1:] - ya[1:]).abs().max() > 1e-3
    for layer in (0, 2):  # sliding layers are untouched
        for a, b in zip(good.rope(layer, pos), bad.rope(layer, pos)):
            assert torch.equal(torch.as_tensor(a), torch.as_tensor(b))


@pytest.mark.parametrize("drop, fragment", [
    ("gemma4.attention.key_length_swa", "'gemma4.attention.key_length_swa' is missing"),
    ("gemma4.attention.sliding_window_pattern",
     "'gemma4.attention.sliding_window_pattern' is missing"),
    ("gemma4.embedding_length_per_layer_input",
     "'gemma4.embedding_length_per_layer_input' is missing"),
])
def test_missing_key_is_one_clear_error(synth_model, tmp_path, drop, fragment):
    bad = rewrite(synth_model("gemma4"), tmp_path / "bad.gguf", drop_keys=(drop,))
    with pytest.raises(ModelLoadError, match=fragment):
        load_gguf_model(bad, "cpu")


def test_inconsistent_keys_are_one_clear_error(synth_model, tmp_path):
    import gguf

    V = gguf.GGUFValueType
    src = synth_model("gemma4")
    cases = [
        ({"gemma4.attention.sliding_window_pattern": ([True] * 4, V.ARRAY)},
         "sliding_window_pattern must be an array of 6 booleans"),
        ({"gemma4.attention.value_length_swa": (32, V.UINT32)},
         "value_length_swa=32 differs from gemma4.attention.key_length_swa=64"),
        ({"gemma4.attention.shared_kv_layers": (3, V.UINT32)},
         "shared_kv_layers=3: .*layer 3 would read the KV cache of layer 2"),
        ({"gemma4.rope.dimension_count_swa": (96, V.UINT32)},
         "rope.dimension_count_swa=96 must be even and at most the head size 64"),
    ]
    for i, (keys, fragment) in enumerate(cases):
        bad = rewrite(src, tmp_path / f"bad{i}.gguf", set_keys=keys)
        with pytest.raises(ModelLoadError, match=fragment):
            load_gguf_model(bad, "cpu")
    bad = rewrite(src, tmp_path / "norope.gguf", drop_tensors=("rope_freqs.weight",))
    with pytest.raises(ModelLoadError, match="'rope_freqs.weight' is missing"):
        load_gguf_model(bad, "cpu")
    bad = rewrite(src, tmp_path / "nople.gguf", drop_tensors=("blk.2.inp_gate.weight",))
    with pytest.raises(ModelLoadError, match="'blk.2.inp_gate.weight' is missing"):
        load_gguf_model(bad, "cpu")


def published_header(path, moe: bool):
    """Metadata as the vendored converter writes it for google/gemma-4-26B-A4B-it (moe) or
    gemma-4-E2B-it (the values of their HF configs), with tiny stand-ins for the tensors whose
    names the config reads (which layers route to experts)."""
    import gguf

    w = gguf.GGUFWriter(str(path), "gemma4")
    n_layer, period = (30, 6) if moe else (35, 5)
    swa = [i % period < period - 1 for i in range(n_layer)]
    w.add_block_count(n_layer)
    w.add_context_length(262144 if moe else 131072)
    w.add_embedding_length(2816 if moe else 1536)
    w.add_head_count(16 if moe else 8)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_key_length(512); w.add_value_length(512)
    w.add_key_length_swa(256); w.add_value_length_swa(256)
    w.add_rope_freq_base(1e6); w.add_rope_freq_base_swa(1e4)
    w.add_final_logit_softcapping(30.0)
    w.add_sliding_window(1024 if moe else 512)
    w.add_sliding_window_pattern(swa)
    w.add_shared_kv_layers(0 if moe else 20)
    w.add_embedding_length_per_layer_input(0 if moe else 256)
    w.add_rope_dimension_count(512); w.add_rope_dimension_count_swa(256)
    if moe:
        w.add_feed_forward_length(2112)
        w.add_head_count_kv([8 if s else 2 for s in swa])
        w.add_expert_count(128); w.add_expert_used_count(8)
        w.add_expert_feed_forward_length(704)
        for i in range(n_layer):
            w.add_tensor(f"blk.{i}.ffn_gate_inp.weight", np.zeros((2, 32), np.float32))
    else:
        w.add_feed_forward_length([6144 if i < 15 else 12288 for i in range(n_layer)])
        w.add_head_count_kv(1)
    w.add_vocab_size(262144)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    return path


@pytest.mark.parametrize("moe", [True, False])
def test_published_metadata_reads_as_llama_cpp_does(tmp_path, moe):
    from impdiff.engine.config import config_from_gguf

    cfg = config_from_gguf(GGUFFile(published_header(tmp_path / "h.gguf", moe)))
    g = [i for i, l in enumerate(cfg.layers) if not l.swa]
    if moe:  # 26B-A4B
        assert g == [5, 11, 17, 23, 29] and cfg.moe_layers == list(range(30))
        assert {(l.swa, l.n_head_kv, l.head_dim, l.n_rot) for l in cfg.layers} == {
            (True, 8, 256, 256), (False, 2, 512, 512)}
        assert {(l.n_expert, l.n_expert_used, l.n_ff_exp, l.n_ff) for l in cfg.layers} == {
            (128, 8, 704, 2112)}
        assert cfg.shared_kv_layers == [] and cfg.sliding_window == 1024
    else:  # E2B: 20 KV-shared layers read layer 13 (sliding) or 14 (global)
        assert g == [4, 9, 14, 19, 24, 29, 34] and cfg.moe_layers == []
        assert [l.kv_layer for l in cfg.layers[15:]] == [14 if i in g else 13
                                                         for i in range(15, 35)]
        assert [l.n_ff for l in cfg.layers] == [6144] * 15 + [12288] * 20
        assert cfg.n_embd_per_layer == 256 and cfg.sliding_window == 512
    assert {(l.swa, l.rope_base, l.rope_freqs) for l in cfg.layers} == {(True, 1e4, False),
                                                                       (False, 1e6, True)}
    assert (cfg.attn_scale, cfg.final_logit_softcap, cfg.n_vocab) == (1.0, 30.0, 262144)


# --- the router compared as sets ----------------------------------------------------------------

def test_set_metrics_tell_noise_from_a_different_choice():
    ref_logits = np.array([[3.0, 2.0, 1.99, -1.0], [3.0, 2.0, 1.0, -1.0]])
    eng_logits = ref_logits + np.array([[0, 0, 0.02, 0], [0, 0, 0.02, 0]])
    b = np.array([[0, 1], [0, 1]], float)
    a = np.array([[0, 2], [0, 3]], float)  # a near tie swapped; then a far one
    m = set_metrics(a, b, eng_logits, ref_logits)
    assert m["cos"].tolist() == [0.5, 0.5]
    assert m["rel_l2"].tolist() == [0.0, 0.5]  # only the far swap is unexplained
    assert set_metrics(b[:, ::-1].copy(), b)["cos"].tolist() == [1.0, 1.0]  # order is free


def test_a_different_expert_verdict_reads_as_such():
    v = Verdict(True, 4, "ffn_moe_topk", "sliding attention, MoE", [7, 8, 9], "positions 7-9",
                0.5, 0.01, 3)
    assert "at layer 4 (sliding attention, MoE): a different expert was picked" in v.sentence()


# --- against llama.cpp --------------------------------------------------------------------------

def diff(path, n, inject="", **kw):
    faults = parse_faults(inject)
    ids = np.random.default_rng(0).integers(0, 512, n).tolist()
    return run_diff(path, ids, faults=faults, loaded=load_gguf_model(path, "cpu", faults), **kw)


@requires_llama_cpp
@pytest.mark.parametrize("preset, qtype", [("gemma4", "F32"), ("gemma4-moe", "F32"),
                                           ("gemma4-moe-split", "Q8_0")])
def test_agrees_with_llama_cpp(synth_model, preset, qtype):
    o = diff(synth_model(preset, qtype), 64, substitution=False)
    assert not o.diverged, o.verdict.sentence()
    # near-uniform random logits: top-1 flips on near ties, KL is the measure
    assert o.logits["kl_mean"] < (1e-5 if qtype == "F32" else 2e-3)
    # every canonical tap is on both sides (K = V layers too: their V node gives Kcur as well)
    assert not o.lockstep.only_a and not o.lockstep.only_b and not o.lockstep.shape_mismatch
    if preset != "gemma4":
        ec = o.extra["expert_choice"]
        assert len(ec) == 6 and ec.agreement.min() > 0.95 and ec.unexplained.sum() == 0


@requires_llama_cpp
@pytest.mark.parametrize("preset, inject, layer, tap, positions", [
    ("gemma4", "swa-on-global", 3, "kqv", "positions ≥ 32"),
    ("gemma4", "kv-share-wrong-layer", 4, "kqv", "all positions"),
    ("gemma4", "rope-prop-rotated-dims", 3, "Qcur_pos", "positions ≥ 1"),
    ("gemma4-moe", "router-no-scale", 0, "ffn_moe_logits", "all positions"),
])
def test_faults_are_localised(synth_model, preset, inject, layer, tap, positions):
    o = diff(synth_model(preset), 64, inject, substitution=inject == "swa-on-global")
    v = o.verdict
    assert (v.layer, v.tap, v.positions_text) == (layer, tap, positions), v.sentence()
    kind = "sliding" if o.layer_kinds[layer].startswith("sliding") else "global"
    assert kind == ("sliding" if inject in ("kv-share-wrong-layer", "router-no-scale")
                    else "global")
    if inject == "swa-on-global":
        assert v.substitution == "local to that layer"


@requires_llama_cpp
def test_without_router_logits_a_different_expert_is_the_verdict(synth_model):
    o = diff(synth_model("gemma4-moe"), 64, "router-no-scale@2",
             selection=TapSelection.parse("ffn_moe_topk,l_out"))
    assert (o.verdict.layer, o.verdict.tap) == (2, "ffn_moe_topk")
    assert "a different expert was picked" in o.verdict.sentence()
    # judged on the raw choice, as the verdict was: the faulty router's own logits must not
    # widen the noise band and excuse the swaps
    assert o.verdict.substitution == "local to that layer", o.verdict.substitution_detail
    ec = expert_choice(o.lockstep.taps).set_index("layer")
    assert ec.loc[2, "agreement"] < 0.9 and ec.loc[1, "agreement"] > 0.95


@requires_llama_cpp
def test_agreement_bracket_finds_where_the_window_fault_starts(synth_model, tmp_path):
    path = synth_model("gemma4")
    config = BracketConfig(model=str(path), sweep=(24, 64), max_tokens=4, inject="swa-on-global",
                           resolution=8, criterion="agreement", diff=False)
    outcome = run_bracket(config, path, tmp_path / "run", "test")
    b = outcome.boundary
    assert b is not None and 24 <= b["last_pass"] and b["first_fail"] <= 64
    # the fault hides keys 32 or more positions back: the last prompt position, or one of the
    # 4 generated tokens, must be that far in
    assert b["first_fail"] - b["last_pass"] <= 8 and b["first_fail"] + 4 > 32
    assert "stops agreeing with llama.cpp" in outcome.summary_line()
