"""Qwen3-MoE in the engine: llama.cpp's routing (softmax, top-k, renormalised weights), the
expert FFN, clear load errors, and agreement with llama.cpp, expert choice included."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from impdiff.diff import run_diff
from impdiff.engine.errors import ModelLoadError
from impdiff.engine.loader import load_gguf_model
from impdiff.engine.model import expert_weights, experts_ffn, route

from .conftest import requires_llama_cpp
from .test_gemma4 import rewrite


def test_config(synth_model):
    cfg = load_gguf_model(synth_model("qwen3moe"), "cpu").cfg
    assert cfg.moe_layers == [0, 1]
    assert {(l.n_expert, l.n_expert_used, l.n_ff_exp) for l in cfg.layers} == {(8, 2, 128)}
    assert cfg.attn_scale == pytest.approx(1 / 8) and cfg.final_logit_softcap == 0.0


def test_routing_is_llama_cpps():
    logits = torch.tensor([[0.1, 2.0, -1.0, 1.5], [3.0, 0.0, 0.0, 2.9]])
    probs, ids = route(logits, 2)
    assert ids.tolist() == [[1, 3], [0, 3]]  # most probable first
    w = expert_weights(probs, ids)
    torch.testing.assert_close(w.sum(-1), torch.ones(2))
    torch.testing.assert_close(w[0, 0] / w[0, 1], torch.tensor(2.0 - 1.5).exp())


def test_experts_ffn_is_the_weighted_sum_of_the_picked_experts():
    g = torch.Generator().manual_seed(0)
    E, n, f, T = 4, 8, 6, 5
    x = torch.randn(T, n, generator=g)
    gate, up = torch.randn(E, f, n, generator=g), torch.randn(E, f, n, generator=g)
    down, scale = torch.randn(E, n, f, generator=g), torch.rand(E, generator=g) + 0.5
    ids = torch.tensor([[0, 2], [1, 3], [2, 0], [3, 2], [1, 0]])
    w = torch.rand(T, 2, generator=g)
    want = torch.stack([
        sum(w[t, j] * scale[e] * (down[e] @ (torch.nn.functional.silu(gate[e] @ x[t])
                                             * (up[e] @ x[t])))
            for j, e in enumerate(ids[t].tolist())) for t in range(T)])
    got = experts_ffn(x, ids, w, gate, up, down, scale, "silu")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_missing_expert_count_is_one_clear_error(synth_model, tmp_path):
    bad = rewrite(synth_model("qwen3moe"), tmp_path / "bad.gguf",
                  drop_keys=("qwen3moe.expert_count",))
    with pytest.raises(ModelLoadError, match="'qwen3moe.expert_count' is missing"):
        load_gguf_model(bad, "cpu")
    bad = rewrite(synth_model("qwen3moe"), tmp_path / "noexp.gguf",
                  drop_tensors=("blk.1.ffn_up_exps.weight",))
    with pytest.raises(ModelLoadError, match="'blk.1.ffn_up_exps.weight' is missing"):
        load_gguf_model(bad, "cpu")


@requires_llama_cpp
@pytest.mark.parametrize("qtype", ["F32", "Q8_0", "Q4_K_M"])
def test_agrees_with_llama_cpp_expert_choice_included(synth_model, qtype):
    path = synth_model("qwen3moe", qtype)
    ids = np.random.default_rng(0).integers(0, 512, 256).tolist()
    o = run_diff(path, ids, loaded=load_gguf_model(path, "cpu"), substitution=False)
    assert not o.diverged, o.verdict.sentence()
    assert not o.lockstep.only_a and not o.lockstep.only_b
    ec = o.extra["expert_choice"]
    assert list(ec.layer) == [0, 1] and ec.agreement.min() > 0.98 and ec.unexplained.sum() == 0
    assert o.logits["kl_mean"] < (1e-5 if qtype == "F32" else 2e-3)
