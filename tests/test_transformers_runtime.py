"""HF transformers as a runtime: hook tables to canonical taps, Q/K order for llama, incremental
eval, and the diff against llama.cpp."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("transformers")

from impdiff.runtimes.engine import EngineRuntime  # noqa: E402
from impdiff.runtimes.hf_transformers import (  # noqa: E402
    FAMILIES, HOOK_TABLES, TransformersRuntime, gguf_qk)
from impdiff.taps import TAPS, TapSelection  # noqa: E402
from impdiff.testing.synthetic import PRESETS, _unpermute_llama_qk, write_hf_dir  # noqa: E402

from .conftest import requires_llama_cpp  # noqa: E402


def test_tables_name_canonical_taps():
    for family, rules in HOOK_TABLES.items():
        assert {r.tap for r in rules} <= TAPS.keys()
        assert {r.source for r in rules} <= {"output", "input", "attn.q", "attn.k", "attn.out"}
    assert FAMILIES["gemma3_text"] == "gemma3"
    # llama converts exactly its four Q/K taps
    assert sorted(r.tap for r in HOOK_TABLES["llama"] if r.convert == "gguf_qk") == \
        ["Kcur", "Kcur_pos", "Qcur", "Qcur_pos"]


def test_gguf_qk_is_the_converters_permutation():
    """x @ W_hf^T, permuted per head, equals x @ W_gguf^T (W_hf = unpermute(W_gguf))."""
    rng = np.random.default_rng(0)
    n_head, d, n_in = 3, 8, 5
    w_gguf = rng.standard_normal((n_head * d, n_in))
    w_hf = _unpermute_llama_qk(w_gguf, n_head)
    x = rng.standard_normal((4, n_in))
    hf = (x @ w_hf.T).reshape(4, n_head, d)
    np.testing.assert_allclose(gguf_qk(hf), (x @ w_gguf.T).reshape(4, n_head, d), atol=1e-12)


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma3"])
@pytest.mark.parametrize("source", ["gguf", "hf-dir"])
def test_every_tap_matches_the_engine(synth_model, tmp_path_factory, arch, source):
    """Chunks of 40, 19 and 1 tokens (past the gemma window of 32): positions continue."""
    gguf_path = synth_model(arch)
    target = gguf_path if source == "gguf" else write_hf_dir(
        PRESETS[arch], tmp_path_factory.mktemp(f"hf-{arch}"))
    sel = TapSelection()
    eng = EngineRuntime(gguf_path, taps=sel, n_ctx=64)
    hf = TransformersRuntime(target, taps=sel, n_ctx=64)
    ids = np.random.default_rng(0).integers(0, 512, 60).tolist()
    for lo, hi in ((0, 40), (40, 59), (59, 60)):
        a, b = eng.eval(ids[lo:hi]), hf.eval(ids[lo:hi])
        assert b.start == a.start == lo and hf.position == hi
        missing = a.taps.keys() ^ b.taps.keys()
        assert not missing, sorted(missing)
        for key in a.taps:
            x, y = a.taps[key], b.taps[key]
            assert x.shape == y.shape, key
            err = np.linalg.norm(x - y) / (np.linalg.norm(x) + 1e-12)
            assert err < 1e-4, (key, err)
        np.testing.assert_allclose(a.logits, b.logits, atol=1e-3)
    hf.reset()
    last = hf.eval(ids[:7], last_only=True)
    assert last.logits.shape == (1, 512)


def test_selection_and_bad_ids(synth_model):
    hf = TransformersRuntime(synth_model("llama"), taps=TapSelection.parse("l_out", "1"),
                             n_ctx=16)
    out = hf.eval([1, 2, 3])
    assert set(out.taps) == {("l_out", 1)}
    with pytest.raises(ValueError, match="outside the vocabulary"):
        hf.eval([9999])


@requires_llama_cpp
def test_diff_against_llamacpp(synth_model):
    from impdiff.diff import run_diff

    path = synth_model("gemma3")
    ids = np.random.default_rng(2).integers(0, 512, 48).tolist()
    outcome = run_diff(None, ids, a=f"transformers:{path}", b=f"llamacpp:{path}")
    assert not outcome.diverged, outcome.verdict.sentence(*outcome.labels)
    assert outcome.labels == ("transformers", "llama.cpp")
    assert not outcome.lockstep.only_a and not outcome.lockstep.only_b  # every tap, both sides
    assert not outcome.lockstep.shape_mismatch
