"""The reference engine on synthetic models: internal consistency and clear load errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from impdiff.engine.config import ARCHITECTURES
from impdiff.engine.errors import ModelLoadError, UnsupportedArchitectureError
from impdiff.engine.faults import parse_faults
from impdiff.engine.generate import SamplingParams, Session, generate, sample
from impdiff.engine.loader import load_gguf_model
from impdiff.engine.model import apply_rope, attention_mask, rope_angles


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_chunked_prefill_and_decode_match_one_pass(synth_model, arch):
    m = load_gguf_model(synth_model(arch), "cpu")
    ids = list(np.random.default_rng(1).integers(0, m.cfg.n_vocab, 70))
    one = Session(m.model, n_ctx=128, n_ubatch=512).eval(ids)
    chunked = Session(m.model, n_ctx=128, n_ubatch=16).eval(ids)
    s = Session(m.model, n_ctx=128)
    s.eval(ids[:-1])
    last = s.eval(ids[-1:])
    torch.testing.assert_close(chunked, one, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(last[0], one[-1], rtol=1e-4, atol=1e-4)


def test_gemma3_layer_pattern_and_window(synth_model):
    cfg = load_gguf_model(synth_model("gemma3"), "cpu").cfg
    assert cfg.is_swa == (True, True, True, True, True, False)
    assert cfg.global_layers == [5]
    assert cfg.sliding_window == 32
    assert (cfg.rope_base, cfg.rope_base_swa) == (1_000_000.0, 10_000.0)


def test_sliding_window_counts_the_query():
    pos = torch.arange(6)
    mask = attention_mask(pos, pos, window=3, window_inclusive=False)
    assert mask[5].tolist() == [False, False, False, True, True, True]
    off_by_one = attention_mask(pos, pos, window=3, window_inclusive=True)
    assert off_by_one[5].tolist() == [False, False, True, True, True, True]


@pytest.mark.parametrize("neox", [True, False])
def test_rope_is_identity_at_position_zero_and_rotates_later(neox):
    x = torch.randn(2, 3, 8)
    cos, sin = rope_angles(torch.tensor([0, 7]), 8, 10000.0, 1.0, None)
    y = apply_rope(x, cos, sin, 8, neox)
    torch.testing.assert_close(y[0], x[0])
    assert not torch.allclose(y[1], x[1])
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))  # a rotation keeps norms


def test_faults_change_the_output_where_they_should(synth_model):
    path = synth_model("gemma3")
    ids = list(range(1, 60))  # longer than the window (32)
    clean = Session(load_gguf_model(path, "cpu").model, n_ctx=64).eval(ids)
    swa = Session(load_gguf_model(path, "cpu", parse_faults("swa-on-global")).model,
                  n_ctx=64).eval(ids)
    # inside the window the fault is invisible; beyond it the global layer differs
    torch.testing.assert_close(swa[:32], clean[:32])
    assert (swa[40:] - clean[40:]).abs().max() > 1e-3


def test_unknown_fault_is_a_clear_error():
    with pytest.raises(ModelLoadError, match="unknown fault 'nope'"):
        parse_faults("nope")


def test_sampling_is_seeded_and_greedy_is_argmax():
    logits = torch.tensor([0.1, 3.0, 2.9, -1.0])
    assert sample(logits, SamplingParams(), None) == 1
    p = SamplingParams(temperature=1.0, top_k=2, seed=3)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    draws1 = [sample(logits, p, g1) for _ in range(20)]
    assert draws1 == [sample(logits, p, g2) for _ in range(20)]
    assert set(draws1) <= {1, 2}
    top_p = SamplingParams(temperature=1.0, top_p=0.3)
    assert {sample(logits, top_p, torch.Generator().manual_seed(i)) for i in range(10)} == {1}


def test_generate_stops_at_stop_ids(synth_model):
    m = load_gguf_model(synth_model("llama"), "cpu")
    out = list(generate(Session(m.model, n_ctx=64), [1, 2, 3], 10))
    assert len(out) == 10
    stopped = list(generate(Session(m.model, n_ctx=64), [1, 2, 3], 10,
                            stop_ids=frozenset({out[3]})))
    assert stopped == out[:out.index(out[3])]


# --- bad files: one clear ModelLoadError, never a raw exception ---------------------------------

def test_truncated_gguf(synth_model, tmp_path):
    src = synth_model("llama")
    data = src.read_bytes()
    for cut in (10, 200, len(data) // 2, len(data) - 7):
        bad = tmp_path / f"cut{cut}.gguf"
        bad.write_bytes(data[:cut])
        with pytest.raises(ModelLoadError, match="cut"):
            load_gguf_model(bad, "cpu")


def test_not_a_gguf(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}" + b"\0" * 64)
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        load_gguf_model(bad, "cpu")


def test_unknown_architecture(tmp_path):
    import gguf

    path = tmp_path / "mamba.gguf"
    w = gguf.GGUFWriter(str(path), "mamba")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    with pytest.raises(UnsupportedArchitectureError, match="'mamba' is not supported.*gemma3"):
        load_gguf_model(path, "cpu")


def test_missing_tensor_names_it(synth_model, tmp_path):
    import gguf

    from impdiff.engine.gguf_file import GGUFFile

    src = GGUFFile(synth_model("llama"))
    path = tmp_path / "missing.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    for key, value in src.metadata.items():
        if key.startswith("llama."):
            w.add_key_value(key, value, gguf.GGUFValueType(src.value_types[key]))
    w.add_tokenizer_model("none")
    for name, t in src.tensors.items():
        if name != "blk.1.ffn_up.weight":
            w.add_tensor(name, np.array(t.data).view(np.float32).reshape(t.shape))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    with pytest.raises(ModelLoadError, match="blk.1.ffn_up.weight' is missing"):
        load_gguf_model(path, "cpu")
