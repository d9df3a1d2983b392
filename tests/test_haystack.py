"""Haystacks hit their token target and hide exactly one sentinel at the asked depth."""

from __future__ import annotations

import pytest

from impdiff.engine.gguf_file import GGUFFile
from impdiff.engine.tokenizer import Tokenizer
from impdiff.errors import UsageError
from impdiff.haystack import build_haystack, recalled

from .conftest import real_model_or_skip


@pytest.fixture(scope="module")
def gemma_tokenizer():
    return Tokenizer.from_gguf(GGUFFile(real_model_or_skip("gemma3-270m")))


@pytest.mark.parametrize("target", [128, 333, 1024, 2048])
def test_length_within_a_few_tokens(gemma_tokenizer, target):
    h = build_haystack(gemma_tokenizer, target)
    assert target - 4 <= h.n_tokens <= target
    assert h.text.count(h.answer) == 1
    assert h.text.endswith("Answer: The secret code is")


@pytest.mark.parametrize("depth", [0.1, 0.5, 0.9])
def test_depth_places_the_sentinel(gemma_tokenizer, depth):
    h = build_haystack(gemma_tokenizer, 1000, depth=depth)
    assert abs(h.sentinel_token / h.n_tokens - depth) < 0.08


def test_other_forms_and_corpora_and_seeds(gemma_tokenizer):
    a = build_haystack(gemma_tokenizer, 300, form="passphrase", corpus="reports", seed=1)
    b = build_haystack(gemma_tokenizer, 300, form="passphrase", corpus="reports", seed=2)
    assert "vault" in a.text and a.text != b.text
    with pytest.raises(UsageError, match="sentinel form"):
        build_haystack(gemma_tokenizer, 300, form="nope")
    with pytest.raises(UsageError, match="question alone is longer"):
        build_haystack(gemma_tokenizer, 10)


def test_recalled():
    assert recalled(" 7319.\nQuestion", "7319")
    assert recalled("It is AMBER-12", "amber-12")
    assert not recalled(" 7391", "7319")
