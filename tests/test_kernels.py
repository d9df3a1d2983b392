"""The fast kernels against the engine's torch reference; on the CPU through Triton's interpreter.

Dequantisation is compared bit for bit (the planes hold the stored integers and scales, and the
kernels form the same float32 products as the reference); products and attention within float32
or fp16 rounding of the reference's result.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from impdiff.engine import model as ref
from impdiff.engine.errors import SettingError
from impdiff.engine.packed import PACKED_TYPES, pack_gguf, pack_nvfp4
from impdiff.engine.quants import dequantize as reference_dequantize
from impdiff.kernels.activation import gated_activation
from impdiff.kernels.attention import attention
from impdiff.kernels.launch import FUSIONS, FUSIONS_ENV, PDL_ENV, fused, pdl_options
from impdiff.kernels.norm_rope import residual_norm, rope, rope_qkv
from impdiff.kernels.quant_matmul import (GemvConfig, dequantize, dequantize_reference, qgemv,
                                          qgemv_gated, qmatmul)
from .test_quants import T, random_tensor

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
QUANT_TYPES = [t for t in PACKED_TYPES if t not in (T.F32, T.F16, T.BF16)]


def _finite_float_tensor(qtype, rows, cols, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 0.1
    dtype = {T.F32: torch.float32, T.F16: torch.float16, T.BF16: torch.bfloat16}[qtype]
    return w.to(dtype).view(torch.uint8).numpy(), (rows, cols)


def _weight(qtype, rows=19, blocks=3, seed=0):
    """Stored bytes and shape of a random [rows, k] tensor; K-quants get 256-value rows."""
    if qtype in (T.F32, T.F16, T.BF16):
        return _finite_float_tensor(qtype, rows, 96 * blocks, seed)
    per_row = blocks if qtype in (T.Q4_K, T.Q5_K, T.Q6_K) else blocks * 5  # 480: not 256-wide
    return random_tensor(qtype, (rows,), per_row, seed)


@pytest.mark.parametrize("qtype", PACKED_TYPES, ids=lambda t: t.name)
def test_planes_and_dequant_kernel_are_bit_exact(qtype):
    raw, shape = _weight(qtype)
    expected = reference_dequantize(raw, qtype, shape)
    w = pack_gguf(raw, qtype, shape, DEVICE)
    assert torch.equal(dequantize_reference(w).cpu(), expected)
    assert torch.equal(dequantize(w, torch.float32).cpu(), expected)


@pytest.mark.parametrize("qtype", PACKED_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("split", [1, 2])
def test_gemv_matches_reference_product(qtype, split):
    raw, shape = _weight(qtype, seed=1)
    w = pack_gguf(raw, qtype, shape, DEVICE)
    x = torch.randn(shape[1], generator=torch.Generator().manual_seed(2))
    expected = reference_dequantize(raw, qtype, shape).double() @ x.double()
    got = qgemv(x.to(DEVICE), w, config=GemvConfig(4, 4, 2, split, 1)).cpu().double()
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()


@pytest.mark.parametrize("qtype,act", [(T.Q4_K, "silu"), (T.Q6_K, "gelu_tanh"),
                                       (T.Q8_0, "silu"), (T.F32, "silu")])
def test_gated_gemv_epilogue_matches_reference(qtype, act):
    raw, shape = _weight(qtype, rows=38, seed=10)  # [gate; up], 19 rows each
    w = pack_gguf(raw, qtype, shape, DEVICE)
    g = torch.Generator().manual_seed(11)
    x = torch.randn(shape[1], generator=g)
    y = reference_dequantize(raw, qtype, shape).double() @ x.double()
    expected = ref.ffn_activation(act, y[:19]) * y[19:]
    # two rows per program: the last program's second pair is past the end
    got = qgemv_gated(x.to(DEVICE), w, act, GemvConfig(4, 4, 2, 2, 1))
    assert (got.cpu().double() - expected).abs().max() <= 1e-5 * expected.abs().max()


@pytest.mark.parametrize("act", ["silu", "gelu_tanh"])
def test_gated_activation_matches_reference(act):
    gate, up = torch.randn(2, 3, 1500, generator=torch.Generator().manual_seed(4)) * 3
    expected = ref.ffn_activation(act, gate) * up
    got = gated_activation(act, gate.to(DEVICE), up.to(DEVICE)).cpu()
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_prefill_product_rescales_large_activations_instead_of_overflowing_fp16():
    raw, shape = _weight(T.Q8_0, seed=5)
    w = pack_gguf(raw, T.Q8_0, shape, DEVICE)
    x = torch.randn(4, shape[1], generator=torch.Generator().manual_seed(6)) * 1e5  # > fp16 max
    expected = x.double() @ reference_dequantize(raw, T.Q8_0, shape).double().T
    got = qmatmul(x.to(DEVICE), w).cpu().double()
    assert torch.isfinite(got).all()
    assert (got - expected).abs().max() <= 2e-3 * expected.abs().max()


def test_nvfp4_planes_match_the_loader_dequantiser():
    from impdiff.engine import nvfp4

    g = torch.Generator().manual_seed(7)
    codes = torch.randint(0, 256, (8, 32), generator=g, dtype=torch.uint8)
    scale = (torch.rand(8, 4, generator=g) * 4).to(torch.float8_e4m3fn)
    expected = nvfp4.dequantize(codes, scale, 0.37)
    w = pack_nvfp4(codes.to(DEVICE), scale.to(DEVICE), 0.37)
    assert torch.equal(dequantize_reference(w).cpu(), expected.float())
    assert torch.allclose(dequantize(w, torch.float32).cpu(), expected.float(), rtol=1e-6)
    x = torch.randn(64, generator=g)
    got = qgemv(x.to(DEVICE), w).cpu().double()
    want = expected.double() @ x.double()
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()


# --- attention, norm, rope --------------------------------------------------------------------

def _reference_attention(q, k, v, positions, scale, window, softcap):
    k_pos = torch.arange(k.shape[0])
    mask = ref.attention_mask(positions.long(), k_pos, window, False)
    group = q.shape[1] // k.shape[1]
    kk, vv = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    s = torch.einsum("thd,shd->hts", q.double(), kk.double()) * scale
    if softcap:
        s = torch.tanh(s / softcap) * softcap
    s = s.masked_fill(~mask, float("-inf"))
    return torch.einsum("hts,shd->thd", torch.softmax(s, -1), vv.double())


@pytest.mark.parametrize("T_q,start,window,softcap,splits", [
    (24, 0, 0, 0.0, 1),  # prefill, causal
    (24, 8, 16, 0.0, 1),  # a later chunk, sliding window
    (1, 40, 0, 0.0, 4),  # decode, key range split four ways
    (1, 40, 16, 30.0, 2),  # decode with window and soft-capping
])
def test_attention_matches_reference(T_q, start, window, softcap, splits):
    g = torch.Generator().manual_seed(8)
    H, Hkv, D, S = 4, 2, 32, 64
    q = torch.randn(T_q, H, D, generator=g)
    k = torch.randn(S, Hkv, D, generator=g).half()
    v = torch.randn(S, Hkv, D, generator=g).half()
    positions = torch.arange(start, start + T_q, dtype=torch.int32)
    end = start + T_q
    expected = _reference_attention(q.half().float(), k[:end].float(), v[:end].float(),
                                    positions, 0.2, window, softcap)
    got = attention(q.to(DEVICE), k.to(DEVICE), v.to(DEVICE), positions.to(DEVICE), 0.2, window,
                    softcap, splits).cpu()
    assert (got.double() - expected).abs().max() < 5e-3


def test_residual_norm_variants_match_reference():
    g = torch.Generator().manual_seed(9)
    x, h = torch.randn(2, 5, 48, generator=g)
    w, w_post = torch.randn(2, 48, generator=g)
    out_x, y = residual_norm(x.to(DEVICE), w.to(DEVICE), 1e-6, h.to(DEVICE), w_post.to(DEVICE))
    x2 = x + ref.rms_norm(h, w_post, 1e-6)
    assert torch.allclose(out_x.cpu(), x2, atol=1e-5)
    assert torch.allclose(y.cpu(), ref.rms_norm(x2, w, 1e-6), atol=1e-5)
    _, y = residual_norm(x.to(DEVICE), None, 1e-6)
    assert torch.allclose(y.cpu(), ref.rms_norm(x, None, 1e-6), atol=1e-5)


@pytest.mark.parametrize("neox,n_rot", [(True, 32), (False, 32), (True, 16)])
def test_rope_matches_reference_and_writes_cache_rows(neox, n_rot):
    g = torch.Generator().manual_seed(10)
    x = torch.randn(6, 3, 32, generator=g)
    positions = torch.arange(10, 16, dtype=torch.int32)
    cos, sin = ref.rope_angles(torch.arange(64), n_rot, 10000.0, 1.0, None)
    expected = ref.apply_rope(x, cos[10:16], sin[10:16], n_rot, neox)
    got = rope(x.to(DEVICE), cos.to(DEVICE), sin.to(DEVICE), positions.to(DEVICE), n_rot, neox)
    assert torch.allclose(got.cpu(), expected, atol=1e-5)
    cache = torch.zeros(64, 3, 32, dtype=torch.float16, device=DEVICE)
    rope(x.to(DEVICE), cos.to(DEVICE), sin.to(DEVICE), positions.to(DEVICE), n_rot, neox,
         out=cache)
    assert torch.allclose(cache[10:16].float().cpu(), expected, atol=2e-3)
    assert not cache[:10].any() and not cache[16:].any()


def test_rope_without_rotated_dims_copies_into_cache_rows():
    x = torch.randn(3, 2, 32, generator=torch.Generator().manual_seed(11))
    positions = torch.tensor([5, 6, 7], dtype=torch.int32, device=DEVICE)
    table = torch.zeros(8, 1, device=DEVICE)
    cache = torch.zeros(8, 2, 32, dtype=torch.float16, device=DEVICE)
    rope(x.to(DEVICE), table, table, positions, 0, False, out=cache)
    assert torch.equal(cache[5:8].cpu(), x.half())
    assert not cache[:5].any()


@pytest.mark.parametrize("neox,n_rot", [(True, 32), (False, 16)])
def test_fused_qkv_rope_norms_rotates_and_fills_both_caches(neox, n_rot):
    g = torch.Generator().manual_seed(12)
    n_q, n_kv, D = 4, 2, 32
    qkv = torch.randn(3, n_q + 2 * n_kv, D, generator=g) * 3
    qn, kn = torch.rand(D, generator=g) + 0.5, torch.rand(D, generator=g) + 0.5
    positions = torch.tensor([5, 6, 7], dtype=torch.int32)
    cos, sin = ref.rope_angles(torch.arange(8), n_rot, 10000.0, 1.0, None)
    q, k, v = qkv.split([n_q, n_kv, n_kv], dim=1)
    rot = lambda t, w: ref.apply_rope(ref.rms_norm(t, w, 1e-6), cos[5:8], sin[5:8], n_rot, neox)
    caches = [torch.zeros(8, n_kv, D, dtype=torch.float16, device=DEVICE) for _ in range(2)]
    got_q = rope_qkv(qkv.to(DEVICE), n_q, n_kv, cos.to(DEVICE), sin.to(DEVICE),
                     positions.to(DEVICE), n_rot, neox, *caches, qn.to(DEVICE), kn.to(DEVICE),
                     1e-6)
    assert torch.allclose(got_q.cpu(), rot(q, qn), atol=1e-5)
    assert torch.allclose(caches[0][5:8].float().cpu(), rot(k, kn), atol=5e-3)
    assert torch.equal(caches[1][5:8].cpu(), v.half())
    assert not caches[0][:5].any() and not caches[1][:5].any()


# --- the fast model against the reference model ------------------------------------------------

@pytest.mark.parametrize("arch,qtype", [("gemma3", "Q4_K_M"), ("llama", "Q8_0")])
def test_fast_model_matches_reference_model(synth_model, arch, qtype):
    from impdiff.engine.fast import FastSession, load_fast_model
    from impdiff.engine.generate import Session
    from impdiff.engine.loader import load_gguf_model

    path = synth_model(arch, qtype)
    reference = Session(load_gguf_model(path, "cpu").model, n_ctx=64)
    fast = FastSession(load_fast_model(path, DEVICE, max_ctx=64))
    prompt = list(range(5, 17))
    want, got = reference.eval(prompt), fast.eval(prompt).cpu()
    assert (got - want).abs().max() < 2e-2 * want.abs().max()
    want, got = reference.eval([7]), fast.eval([7]).cpu()  # a decode step: the GEMV path
    assert (got - want).abs().max() < 2e-3 * want.abs().max()
    assert int(got.argmax()) == int(want.argmax())


def test_fast_taps_carry_reference_names_and_can_patch(synth_model):
    from impdiff.engine.fast import FastSession, load_fast_model
    from impdiff.engine.generate import Session
    from impdiff.engine.loader import load_gguf_model

    path = synth_model("gemma3", "F32")
    seen_ref, seen_fast = [], []
    Session(load_gguf_model(path, "cpu").model, n_ctx=32).eval(
        [3, 4, 5], tap=lambda n, i, x: seen_ref.append((n, i)))
    session = FastSession(load_fast_model(path, DEVICE, max_ctx=32))
    clean = session.eval([3, 4, 5], tap=lambda n, i, x: seen_fast.append((n, i)))
    assert set(seen_fast) == set(seen_ref)  # the order of Q/K/V's taps may differ
    session.reset()
    patched = session.eval([3, 4, 5], tap=lambda n, i, x: x * 0 if (n, i) == ("l_out", 2) else None)
    assert not torch.allclose(patched, clean)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_graph_greedy_decode_equals_eager_decode(synth_model):
    from impdiff.engine.fast import FastSession, load_fast_model

    model = load_fast_model(synth_model("llama", "Q4_K_M"), "cuda", max_ctx=128)
    graphed = FastSession(model).generate_greedy([1, 2, 3, 4], 24)
    eager, session = [], FastSession(model)
    logits = session.eval([1, 2, 3, 4], last_only=True)
    for _ in range(24):
        eager.append(int(logits[-1].argmax()))
        logits = session.eval([eager[-1]], tap=lambda n, i, x: None)  # a tap: no graph
    assert graphed == eager


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_dependent_launches_change_no_token(synth_model, monkeypatch):
    """PDL (kernels/launch.py) reorders no read before its producer: the graphed greedy
    decode is the same with it on and off."""
    from impdiff.engine.fast import FastSession, load_fast_model

    model = load_fast_model(synth_model("gemma3", "Q4_K_M"), "cuda", max_ctx=128)
    tokens = {}
    for pdl in ("1", "0"):
        monkeypatch.setenv(PDL_ENV, pdl)
        tokens[pdl] = FastSession(model).generate_greedy([1, 2, 3, 4], 24)
    assert tokens["1"] == tokens["0"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_parallel_branches_change_no_token(synth_model, monkeypatch):
    """The "branches" fusion (Q+K and V of a Q4_K_M layer as parallel branches) only
    reorders kernels that share no output: the same logits and greedy tokens."""
    from impdiff.engine.fast import FastSession, load_fast_model

    model = load_fast_model(synth_model("llama", "Q4_K_M"), "cuda", max_ctx=128)
    assert any(len(layer.qkv) > 1 for layer in model.layers)
    tokens, logits = {}, {}
    for on in ("", "branches"):
        monkeypatch.setenv(FUSIONS_ENV, on)
        tokens[on] = FastSession(model).generate_greedy([1, 2, 3, 4], 24)
        logits[on] = FastSession(model).eval([5])  # a one-token step: the graph
    assert tokens["branches"] == tokens[""]
    assert torch.equal(logits["branches"], logits[""])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("fusions", ["rope", "all"])
def test_fused_steps_leave_their_kernels_out_and_agree(synth_model, tmp_path, monkeypatch,
                                                       fusions):
    """The fusions with every K-quant product of a Q4_K_M model on the i8 kernel (a table
    naming them all): a decode step runs no RoPE kernel; its logits are the reference model's
    as closely as the fast path's are, and the graphed greedy decode equals the eager one."""
    import json

    from impdiff.engine.fast import FastSession, load_fast_model
    from impdiff.engine.generate import Session
    from impdiff.engine.loader import load_gguf_model
    from impdiff.kernels import cuda_driver, mma_gemv
    from impdiff.kernels.launch import tuning_table

    if cuda_driver.nvcc_path() is None or torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("the i8 kernel needs nvcc and an sm_80+ GPU")
    path = synth_model("llama", "Q4_K_M")
    model = load_fast_model(path, "cuda", max_ctx=128)
    table = {}
    for layer in model.layers:
        gated = len(layer.gate_up) == 1
        for w in [*layer.qkv, layer.wo, layer.down, model.output, *layer.gate_up]:
            in_gate_up = any(w is g for g in layer.gate_up) and gated
            table[mma_gemv.table_key(w.fmt.name, in_gate_up, w.n, w.k)] = (
                [4, 1, 1, 2, "i8"] if in_gate_up else [8, 1, 1, 4, "i8"])
    (tmp_path / "all_i8.mma.json").write_text(json.dumps(table))
    monkeypatch.setenv(mma_gemv.TABLE_ENV, str(tmp_path / "all_i8.mma.json"))
    monkeypatch.setenv(FUSIONS_ENV, fusions)
    tuning_table.cache_clear()
    try:
        token = torch.tensor([7], device="cuda")
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            model.forward(token, torch.tensor([0], dtype=torch.int32, device="cuda"))
            torch.cuda.synchronize()
        names = [e.name for e in prof.events() if e.device_type.name == "CUDA"]
        assert sum("_rope_kernel" in n for n in names) == 0
        assert sum("kquant_imma_gemv" in n for n in names) >= 4 * len(model.layers) + 1
        reference = Session(load_gguf_model(path, "cpu").model, n_ctx=64)
        fast = FastSession(model)
        prompt = list(range(5, 17))
        reference.eval(prompt), fast.eval(prompt)
        want, got = reference.eval([7]), fast.eval([7]).cpu()
        assert (got - want).abs().max() < 2e-3 * want.abs().max()
        graphed = FastSession(model).generate_greedy([1, 2, 3, 4], 24)
        eager, session = [], FastSession(model)
        logits = session.eval([1, 2, 3, 4], last_only=True)
        for _ in range(24):
            eager.append(int(logits[-1].argmax()))
            pos = torch.tensor([session.pos], dtype=torch.int32, device="cuda")
            logits = model.forward(torch.tensor([eager[-1]], device="cuda"), pos)  # no graph
            session.pos += 1
        assert graphed == eager
    finally:
        tuning_table.cache_clear()


def test_dependent_launch_options_only_where_they_apply(monkeypatch):
    cuda = torch.device("cuda")  # never touched: each switch below decides first
    assert pdl_options(torch.device("cpu")) == {}
    assert pdl_options(cuda, one_token=False) == {}
    monkeypatch.setenv(PDL_ENV, "0")
    assert pdl_options(cuda) == {}
    monkeypatch.setenv(PDL_ENV, "1")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert pdl_options(cuda) == {}


def test_fusions_switch_on_by_name_or_all_and_refuse_unknown_names(monkeypatch):
    monkeypatch.delenv(FUSIONS_ENV, raising=False)
    assert not any(fused(name) for name in FUSIONS)  # opt-in
    monkeypatch.setenv(FUSIONS_ENV, " rope")
    assert [fused(name) for name in FUSIONS] == [False, True]
    monkeypatch.setenv(FUSIONS_ENV, "all")
    assert all(fused(name) for name in FUSIONS)
    monkeypatch.setenv(FUSIONS_ENV, "branches,ropes")
    with pytest.raises(SettingError, match="unknown fusion 'ropes'.*branches, rope"):
        fused("branches")


def test_unsupported_architecture_is_one_clear_error(synth_model):
    from impdiff.engine.errors import ModelLoadError
    from impdiff.engine.fast import load_fast_model

    with pytest.raises(ModelLoadError, match="fast path does not run"):
        load_fast_model(synth_model("qwen3moe", "F32"), DEVICE, max_ctx=16)



def test_row_stats_match_reference_and_count_non_finite():
    from impdiff.kernels.stats import row_stats, row_stats_reference

    x = torch.randn(5, 3, 40, generator=torch.Generator().manual_seed(11))
    x[1, 0, 3], x[2, 2, 7] = float("nan"), float("inf")
    got, want = row_stats(x.to(DEVICE)).cpu(), row_stats_reference(x)
    assert torch.allclose(got, want, rtol=1e-5)
    assert got[:, 3].tolist() == [0, 1, 1, 0, 0]


def test_row_stats_of_many_tensors_in_launches_of_a_few(monkeypatch):
    from impdiff.kernels import stats

    g = torch.Generator().manual_seed(12)
    wide = torch.randn(4, 3, 48, generator=g)
    xs = [torch.randn(4, 40, generator=g), wide[:, 1],  # a strided view
          torch.randn(4, 2, 8, generator=g).half(), torch.randn(4, 5000, generator=g),
          torch.randn(4, 1, generator=g)]
    monkeypatch.setattr(stats, "MAX_TENSORS", 2)  # three launches
    got = stats.row_stats_many([x.to(DEVICE) for x in xs]).cpu()
    for i, x in enumerate(xs):
        assert torch.allclose(got[i], stats.row_stats_reference(x), rtol=1e-5, atol=1e-5), i


def test_gpu_tap_stats_table_from_fast_model(synth_model):
    from impdiff.engine.fast import FastSession, load_fast_model
    from impdiff.tap_stats import GpuTapStats

    session = FastSession(load_fast_model(synth_model("llama", "F32"), DEVICE, max_ctx=16))
    stats = GpuTapStats()
    session.eval([3, 4, 5], tap=stats)
    session.eval([6], tap=stats, last_only=True)  # a second chunk continues the positions
    table = stats.table()
    l_out = table[(table.tap == "l_out") & (table.layer == 0)]
    assert list(l_out.position) == [0, 1, 2, 3]
    assert list(table[table.tap == "result_output"].position) == [0, 1, 2, 3]
    assert (l_out.rms > 0).all() and (table.nonfinite == 0).all()
    # ubatches of 3: both chunks now run as recorded (CUDA-graph) forwards, same table
    recorded = FastSession(session.model, n_ubatch=3)
    again = GpuTapStats()
    recorded.eval([3, 4, 5], tap=again)
    recorded.eval([6], tap=again, last_only=True)
    assert {k for k in recorded._graphs} == {(3, False, True), (1, True, True), (1, True, False)}
    pd.testing.assert_frame_equal(again.table(), table, rtol=1e-5)


def test_every_kernel_compiles_for_sm90():
    """The interpreter accepts code the compiler rejects; compile each kernel for a Hopper
    target here (no GPU needed: ptxas ships with Triton)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-m", "impdiff.kernels.compile_check"], env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
