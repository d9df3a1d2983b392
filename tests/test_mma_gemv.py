"""The tensor-core K-quant GEMVs (kernels/cuda/q4k_mma_gemv.cu: Q4_K; kquant_imma_gemv.cu:
Q4_K and Q6_K) against the planes' torch reference (the i8 kernel: against `i8_reference`, its
16-bit activation in torch).

The kernel is CUDA C, so Triton's interpreter cannot run it: off the GPU the source is compiled
for sm_90 (nvcc ships on the CI machine) and the dispatch is checked; on a GPU every path runs.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from impdiff.engine.packed import pack_gguf
from impdiff.kernels import cuda_driver, mma_gemv
from impdiff.kernels.activation import gated_activation
from impdiff.kernels.launch import tuning_table
from impdiff.kernels.quant_matmul import dequantize_reference, qgemv, qgemv_gated
from impdiff.testing.shapes import _random_blocks
from .test_quants import T

needs_gpu = pytest.mark.skipif(
    not torch.cuda.is_available() or cuda_driver.nvcc_path() is None
    or torch.cuda.get_device_capability()[0] < 8, reason="needs an sm_80+ GPU and nvcc")


def _weight(rows: int, cols: int, device: str, seed: int = 0, qtype=T.Q4_K):
    """A random [rows, cols] weight of `qtype` in the planes, on `device`."""
    blocks = _random_blocks(np.random.default_rng(seed), qtype, rows, cols)
    return pack_gguf(blocks, qtype, (rows, cols), device)


def _rel_err(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got.double().cpu() - expected).abs().max() / expected.abs().max()).item()


@pytest.mark.skipif(cuda_driver.nvcc_path() is None, reason="no nvcc")
@pytest.mark.parametrize("operands", ["f16", "i8", "i8 q6_k", "i8 rope", "i8 q6_k rope capped"])
@pytest.mark.parametrize("act,k_warps", [(0, 1), (1, 1), (2, 1), (0, 4), (1, 2)])
def test_kernel_source_compiles_for_sm90(tmp_path, monkeypatch, act, k_warps, operands):
    monkeypatch.setenv(cuda_driver.CACHE_ENV, str(tmp_path))
    kind, *flags = operands.split()
    if "rope" in flags and act:
        pytest.skip("RoPE follows a plain product")
    source = mma_gemv.SOURCES[kind]
    defines = mma_gemv.defines(mma_gemv.MmaConfig(8, 2, 1, k_warps, kind), act, True,
                               "q6_k" if "q6_k" in flags else "q4_k",
                               frozenset({"ROPE"} if "rope" in flags else ()),
                               2 if "capped" in flags else None)
    image = cuda_driver.compile_cubin(source, "sm_90", defines)
    assert image[:4] == b"\x7fELF"
    assert list(tmp_path.glob("*.cubin")), "the cubin is cached"
    assert cuda_driver.compile_cubin(source, "sm_90", defines) == image


@pytest.mark.skipif(cuda_driver.nvcc_path() is None, reason="no nvcc")
def test_a_changed_header_rebuilds_the_kernels_that_include_it(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv(cuda_driver.CACHE_ENV, str(cache))
    header, source = tmp_path / "k.cuh", tmp_path / "k.cu"
    header.write_text("#define SCALE 2.0f\n")
    source.write_text('#include "k.cuh"\nextern "C" __global__ void k(float* p) { p[0] *= SCALE; }\n')
    first = cuda_driver.compile_cubin(source, "sm_90", {})
    header.write_text("#define SCALE 3.0f\n")
    assert cuda_driver.compile_cubin(source, "sm_90", {}) != first
    assert len(list(cache.glob("*.cubin"))) == 2


@pytest.mark.parametrize("scale", [1.0, 3e4, 1e-5])
def test_i8_activation_keeps_16_bits_a_group(scale):
    """The i8 kernel's activation: within half a step of x in every group of 32, each step
    1/32639 of the group's largest |x| (its hi byte then never overflows), zeros kept."""
    x = torch.randn(4096, generator=torch.Generator().manual_seed(0)) * scale
    x[64:96] = 0.0
    x[96:128] *= 1e-3  # a small group next to large ones keeps its own scale
    got = mma_gemv.i8_activation(x)
    amax = x.view(-1, 32).abs().amax(dim=1, keepdim=True)
    err = (got - x).view(-1, 32).abs()
    assert (err <= amax / mma_gemv.I8_LIMIT * 0.51).all()  # half a step, and float32 rounding
    assert torch.equal(got[64:96], x[64:96])
    steps = torch.round(x.view(-1, 32) / (amax / mma_gemv.I8_LIMIT).clamp_min(1e-38))
    assert steps.abs().max() <= mma_gemv.I8_LIMIT


def test_i8_activation_of_groups_of_16_pairs_groups_j_and_8_plus_j():
    """Q6_K's activation groups: groups j and 8 + j of a super-block share one dx."""
    x = torch.randn(512, generator=torch.Generator().manual_seed(1))
    x[128 + 16 * 3:128 + 16 * 4] *= 1e4  # group 11 of super-block 0: group 3's dx grows with it
    got, alone = mma_gemv.i8_activation(x, 16), mma_gemv.i8_activation(x[:256], 16)
    assert torch.equal(got[:256], alone)
    step = x[128 + 48:128 + 64].abs().max() / mma_gemv.I8_LIMIT
    assert (got[48:64] - x[48:64]).abs().max() > 0.1 * step  # coarse steps: the pair's
    assert (got[64:80] - x[64:80]).abs().max() < 1e-3 * step  # the next pair keeps its own
    assert torch.equal(mma_gemv.i8_activation(x[256:], 16), got[256:])


def test_i8_activation_divides_as_the_kernel_does():
    """1 / dx as a true float32 quotient (the kernel's LIMIT / amax), not a product with a
    rounded reciprocal: a value on a half-way point then rounds as the kernel rounds it."""
    x = torch.rand(1 << 16, generator=torch.Generator().manual_seed(2)) + 0.5
    amax = x.view(-1, 32).amax(dim=1).numpy()
    inv = np.float32(mma_gemv.I8_LIMIT) / amax  # numpy divides in float32 as CUDA does
    expected = (np.rint(x.view(-1, 32).numpy() * inv[:, None]) * (amax / np.float32(
        mma_gemv.I8_LIMIT))[:, None]).reshape(-1)
    assert np.array_equal(mma_gemv.i8_activation(x).numpy(), expected)


@pytest.mark.parametrize("qtype", [T.Q4_K, T.Q6_K], ids=lambda t: t.name)
def test_i8_reference_is_within_its_bound_of_the_float_product(qtype):
    w = _weight(64, 1024, "cpu", seed=2, qtype=qtype)
    x = torch.randn(1024, generator=torch.Generator().manual_seed(3))
    exact = dequantize_reference(w).double() @ x.double()
    assert 1e-7 < _rel_err(mma_gemv.i8_reference(x, w), exact) < 1e-4


def test_dispatch_leaves_cpu_tensors_and_other_formats_to_triton():
    w = _weight(16, 256, "cpu")
    assert mma_gemv.choose(torch.zeros(256), w) is None
    q6 = _weight(16, 256, "cpu", qtype=T.Q6_K)
    assert mma_gemv.choose(torch.zeros(256), q6) is None
    q8 = pack_gguf(_random_blocks(np.random.default_rng(0), T.Q8_0, 16, 256), T.Q8_0,
                   (16, 256), "cpu")
    assert not mma_gemv.supported(torch.zeros(256), q8)


def test_a_kernel_that_does_not_build_falls_back_with_one_warning(tmp_path, monkeypatch):
    broken = tmp_path / "nvcc"
    broken.write_text("#!/bin/sh\necho 'nvcc fatal: Unsupported gpu architecture' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setattr(cuda_driver, "nvcc_path", lambda: str(broken))
    monkeypatch.setenv(cuda_driver.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(mma_gemv, "_capability", lambda device: (9, 0))
    monkeypatch.setenv("IMPDIFF_PDL", "0")  # nothing asks the (absent) GPU
    mma_gemv._builds.cache_clear()
    with pytest.warns(UserWarning, match="did not build.*Unsupported gpu architecture"):
        assert not mma_gemv._builds(torch.device("cuda"), mma_gemv.MmaConfig(8, 2, 1), "silu",
                                    "q4_k")
    mma_gemv._builds.cache_clear()
    with pytest.warns(UserWarning, match="did not build"):
        assert not mma_gemv._builds(torch.device("cuda"),
                                    mma_gemv.MmaConfig(8, 2, 1, 1, "i8"), None, "q6_k")
    mma_gemv._builds.cache_clear()


def _expected(x: torch.Tensor, w, operands: str) -> torch.Tensor:
    """float64 on the CPU: the exact product (f16: ~33 bits of each activation), or the i8
    kernel's own (its 16-bit activation)."""
    x, w = x.cpu(), w.to("cpu")
    if operands == "i8":
        return mma_gemv.i8_reference(x, w)
    return dequantize_reference(w).double() @ x.double()


@needs_gpu
@pytest.mark.parametrize("operands,qtype", [("f16", T.Q4_K), ("i8", T.Q4_K), ("i8", T.Q6_K)],
                         ids=lambda v: getattr(v, "name", v))
@pytest.mark.parametrize("rows,cols", [(1024, 4096), (1032, 1536), (64, 256)])
@pytest.mark.parametrize("config", [(4, 1, 1), (2, 4, 1), (4, 1, 4), (8, 2, 2), (8, 1, 1, 4),
                                    (8, 2, 1, 8), (4, 2, 3, 2)],
                         ids=lambda c: "/".join(map(str, c)))
@pytest.mark.parametrize("scale", [1.0, 3e4, 1e-5])
def test_gemv_matches_reference_product(rows, cols, config, scale, operands, qtype):
    """Odd row counts leave the last warp's row blocks past the end (the i8 kernel's last one
    overlaps the one before); split K adds partial sums; large and tiny activations exercise
    the activation's scales."""
    w = _weight(rows, cols, "cuda", seed=rows, qtype=qtype)
    x = torch.randn(cols, device="cuda", generator=torch.Generator("cuda").manual_seed(1)) * scale
    if cols > 256:
        x[256:512] = 0.0  # a super-block of zeros (f16: its parts' scale is 1)
    got = mma_gemv.gemv(x, w, config=mma_gemv.MmaConfig(*config, operands=operands))
    # float32 rounding of the sums
    assert _rel_err(got, _expected(x, w, operands)) < 2e-6


@needs_gpu
@pytest.mark.parametrize("operands,qtype", [("f16", T.Q4_K), ("i8", T.Q4_K), ("i8", T.Q6_K)],
                         ids=lambda v: getattr(v, "name", v))
@pytest.mark.parametrize("act", ["silu", "gelu_tanh"])
@pytest.mark.parametrize("config", [(8, 2, 1), (2, 4, 1), (8, 2, 1, 4)],
                         ids=lambda c: "/".join(map(str, c)))
def test_gated_epilogue_matches_reference(act, config, operands, qtype):
    # [gate; up], 1028 output rows: a partial block
    w = _weight(2 * 1028, 2048, "cuda", seed=3, qtype=qtype)
    x = torch.randn(2048, device="cuda", generator=torch.Generator("cuda").manual_seed(4))
    y = _expected(x, w, operands).float().cuda()  # (the activation kernel runs on the GPU)
    expected = gated_activation(act, y[None, :1028], y[None, 1028:])[0].double().cpu()
    got = mma_gemv.gemv(x, w, act=act, config=mma_gemv.MmaConfig(*config, operands=operands))
    assert _rel_err(got, expected) < 2e-6


def test_the_rope_epilogue_takes_only_what_it_can_store():
    """takes_rope: the i8 kernel in one split, whole row blocks, pairs at even rows, fp16
    caches of K's width, a float32 Q buffer and cos/sin of n_rot / 2 columns."""
    n_q, n_kv, d = 4, 2, 64
    w = _weight((n_q + 2 * n_kv) * d, 256, "cpu")
    cos = torch.zeros(8, d // 2)
    rope = mma_gemv.RopeAfter(torch.zeros(1, dtype=torch.int32), cos, cos.clone(),
                              torch.zeros(1, n_q, d), torch.zeros(8, n_kv, d, dtype=torch.half),
                              torch.zeros(8, n_kv, d, dtype=torch.half), n_q * d, n_kv * d, d, d)
    i8 = mma_gemv.MmaConfig(8, 1, 1, 8, "i8")
    assert mma_gemv.takes_rope(i8, w, rope)
    assert not mma_gemv.takes_rope(mma_gemv.MmaConfig(8, 1, 2, 4, "i8"), w, rope)  # split K
    assert not mma_gemv.takes_rope(mma_gemv.MmaConfig(8, 1, 1), w, rope)  # the f16 kernel
    assert not mma_gemv.takes_rope(i8, w, replace(rope, row0=1))  # pairs across rows
    assert not mma_gemv.takes_rope(i8, w, replace(rope, row0=2))  # rows past V
    assert not mma_gemv.takes_rope(i8, w, replace(rope, k_cache=rope.k_cache.float()))
    assert not mma_gemv.takes_rope(i8, w, replace(rope, cos=torch.zeros(8, d)))
    assert not mma_gemv.takes_rope(i8, _weight(8 * d - 8, 256, "cpu"), rope)  # a part block


@needs_gpu
@pytest.mark.parametrize("split", [False, True], ids=["qkv", "qk+v"])
def test_rope_epilogue_stores_as_rope_qkv(split):
    """ROPE: a one-token [Q; K; V] projection rotated and stored by the GEMV's epilogue as the
    kernel's plain product and rope_qkv store it: Q to q, K and V into the caches' row at the
    position and nowhere else; as one Q4_K weight or Q+K (Q4_K) and V (Q6_K)."""
    from impdiff.engine.model import rope_angles
    from impdiff.kernels.norm_rope import rope_qkv

    n_q, n_kv, d, k = 32, 8, 128, 1024  # the 8B's heads: 320 to 384 row blocks, more than
    # the SMs hold at the epilogue's registers (its variant with the plain kernel's residency)
    weights = ([_weight((n_q + n_kv) * d, k, "cuda", seed=22),
                _weight(n_kv * d, k, "cuda", seed=23, qtype=T.Q6_K)] if split
               else [_weight((n_q + 2 * n_kv) * d, k, "cuda", seed=22)])
    x = torch.randn(k, device="cuda", generator=torch.Generator("cuda").manual_seed(24))
    positions = torch.tensor([5], dtype=torch.int32, device="cuda")
    cos, sin = rope_angles(torch.arange(16, device="cuda"), d, 10000.0, 1.0, None)
    cfg = mma_gemv.MmaConfig(8, 1, 1, 8, "i8")

    def caches():
        return [torch.zeros(16, n_kv, d, dtype=torch.float16, device="cuda") for _ in range(2)]

    qkv = torch.cat([mma_gemv.gemv(x, w, cfg) for w in weights]).view(1, n_q + 2 * n_kv, d)
    want_k, want_v = caches()
    want_q = rope_qkv(qkv, n_q, n_kv, cos, sin, positions, d, False, want_k, want_v)
    q, (k_cache, v_cache) = torch.empty(1, n_q, d, device="cuda"), caches()
    rope, row0 = mma_gemv.RopeAfter(positions, cos, sin, q, k_cache, v_cache, n_q * d,
                                    n_kv * d, d, d), 0
    for w in weights:
        mma_gemv.gemv_rope(x, w, cfg, replace(rope, row0=row0))
        row0 += w.n
    torch.cuda.synchronize()
    assert (q - want_q).abs().max() <= 1e-6 * want_q.abs().max()  # the rotation's rounding
    assert (k_cache.float() - want_k.float()).abs().max() <= 1e-3 * want_k.abs().max()
    assert torch.equal(v_cache, want_v)  # the same floats rounded once
    assert not k_cache[:5].any() and not k_cache[6:].any() and not v_cache[6:].any()


@pytest.fixture
def table(tmp_path, monkeypatch):
    """A tuning table of our own in place of the GPU's shipped one."""
    path = tmp_path / "table.mma.json"
    path.write_text('{"q4_k gated 1024 1024": [4, 2, 1], "q4_k 512 1024": [4, 1, 1, 2, "i8"], '
                    '"q6_k 512 1024": [8, 1, 1, 4, "i8"], "q6_k 256 1024": [8, 1, 1]}')
    monkeypatch.setenv(mma_gemv.TABLE_ENV, str(path))
    tuning_table.cache_clear()
    yield
    tuning_table.cache_clear()


@needs_gpu
def test_without_a_table_q6k_and_the_gated_q4k_product_run_on_the_i8_kernel(tmp_path,
                                                                             monkeypatch):
    (tmp_path / "empty.json").write_text("{}")
    monkeypatch.setenv(mma_gemv.TABLE_ENV, str(tmp_path / "empty.json"))
    tuning_table.cache_clear()
    try:
        x = torch.randn(1024, device="cuda", generator=torch.Generator("cuda").manual_seed(9))
        q6 = _weight(256, 1024, "cuda", seed=9, qtype=T.Q6_K)
        assert mma_gemv.choose(x, q6) == mma_gemv.MmaConfig(8, 1, 1, 4, "i8")
        assert _rel_err(qgemv(x, q6), _expected(x, q6, "i8")) < 2e-6
        q4 = _weight(512, 1024, "cuda", seed=9)
        assert mma_gemv.choose(x, q4, "silu") == mma_gemv.MmaConfig(4, 1, 1, 2, "i8")
        assert mma_gemv.choose(x, q4) is None
    finally:
        tuning_table.cache_clear()


@needs_gpu
def test_dispatch_follows_the_table_and_graph_replays_agree(table, monkeypatch):
    w = _weight(2 * 512, 1024, "cuda", seed=5)
    x = torch.randn(1024, device="cuda", generator=torch.Generator("cuda").manual_seed(5))
    assert mma_gemv.choose(x, w, "silu") == mma_gemv.MmaConfig(4, 2, 1)
    assert mma_gemv.choose(x, w) is None  # not in the table: Triton
    down = _weight(512, 1024, "cuda", seed=6)
    assert mma_gemv.choose(x, down) == mma_gemv.MmaConfig(4, 1, 1, 2, "i8")
    unaligned = torch.randn(1025, device="cuda")[1:]  # the i8 kernel stages x in 16-byte loads
    assert mma_gemv.choose(unaligned, down) is None
    assert _rel_err(qgemv(x, down), _expected(x, down, "i8")) < 2e-6
    q6 = _weight(512, 1024, "cuda", seed=7, qtype=T.Q6_K)
    assert mma_gemv.choose(x, q6) == mma_gemv.MmaConfig(8, 1, 1, 4, "i8")
    assert _rel_err(qgemv(x, q6), _expected(x, q6, "i8")) < 2e-6
    # the f16 kernel multiplies Q4_K alone: a table naming it for Q6_K leaves it to Triton
    assert mma_gemv.choose(x, _weight(256, 1024, "cuda", seed=8, qtype=T.Q6_K)) is None
    eager = qgemv_gated(x, w, "silu")
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = qgemv_gated(x, w, "silu")
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(captured, eager)
    monkeypatch.setenv(mma_gemv.KERNEL_ENV, "triton")
    assert mma_gemv.choose(x, w, "silu") is None
    assert _rel_err(qgemv_gated(x, w, "silu"), eager.double().cpu()) < 1e-5
    assert _rel_err(qgemv(x, w), (dequantize_reference(w).double() @ x.double()).cpu()) < 1e-5
