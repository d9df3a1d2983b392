"""transformers vs llama.cpp on a real model (its own file: transformers spends ~40 s
dequantising the GGUF on two cores)."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

from .conftest import real_model_or_skip, requires_llama_cpp  # noqa: E402


@requires_llama_cpp
@pytest.mark.slow
def test_smollm2_transformers_vs_llamacpp():
    from impdiff.diff import run_diff
    from impdiff.runtimes.registry import RuntimeSpec, describe
    from impdiff.sides import side_token_ids
    from impdiff.taps import TapSelection

    real_model_or_skip("smollm2-135m")
    a, b = RuntimeSpec("transformers", "smollm2-135m"), RuntimeSpec("llamacpp", "smollm2-135m")
    ids = side_token_ids([describe(a), describe(b)], n_tokens=48)
    outcome = run_diff(None, ids, a=a, b=b, selection=TapSelection.parse("l_out,kqv,Qcur_pos"))
    assert not outcome.diverged, outcome.verdict.sentence(*outcome.labels)
    # llama Q/K taps are permuted to the GGUF's order: their floor is llama.cpp's rounding only
    assert outcome.floor["Qcur_pos"] < 0.05 and outcome.floor["l_out"] < 0.05
    assert outcome.logits["top1"] > 0.9
