"""`impdiff battery`: the prompts, agreement and first divergence, the automatic layer diff at a
disagreement, and the battery as a gate recipe."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from impdiff import sides
from impdiff.battery import (BATTERY, BatteryConfig, BatteryOutcome, PromptResult, baseline_of,
                             check_answer, compare, encode_battery_prompt, first_divergence,
                             markdown_summary, run_battery, select_prompts)
from impdiff.errors import UsageError
from impdiff.recipes import load_recipe

from .conftest import real_model_or_skip, requires_llama_cpp
from .test_cli import assert_one_line_error, impdiff


def test_battery_covers_the_seed_kinds():
    assert len(BATTERY) >= 20
    assert len({p.id for p in BATTERY}) == len(BATTERY)
    kinds = {p.kind for p in BATTERY}
    assert kinds == {"fact", "arithmetic", "code", "multilingual", "json", "instruction",
                     "long-context"}
    assert [p.haystack for p in BATTERY if p.kind == "long-context"] == [2048]


def test_divergence_and_answers():
    assert first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert first_divergence([1, 2], [1, 2, 3]) == 2  # one stopped earlier
    p = next(x for x in BATTERY if x.id == "json-person")
    assert check_answer(p, 'Sure: {"name": "Alice", "age": 30}', p.expect)
    assert not check_answer(p, "Alice is 30", p.expect)  # no JSON
    q = next(x for x in BATTERY if x.id == "fact-capital")
    assert check_answer(q, " The capital is PARIS.", q.expect)
    r = PromptResult("x", "fact", 5, [1, 2, 3, 4], [1, 2, 9, 4], "", "", None, None, 2)
    assert not r.agree and r.agreement == 0.5
    with pytest.raises(UsageError, match="unknown prompt"):
        select_prompts(["nope"])


def test_long_context_prompt_is_2048_tokens_in_the_chat_template():
    from impdiff.engine.gguf_file import GGUFFile
    from impdiff.engine.tokenizer import Tokenizer

    tok = Tokenizer.from_gguf(GGUFFile(real_model_or_skip("smollm2-135m")))
    p = next(x for x in BATTERY if x.kind == "long-context")
    ids, expect = encode_battery_prompt(p, tok, True, 2048)
    assert 2000 <= len(ids) <= 2048 and len(expect) == 1 and expect[0].isdigit()
    assert "<|im_start|>assistant" in tok.decode(ids[-8:])
    ids, _ = encode_battery_prompt(BATTERY[0], tok, True, 2048)
    assert "<|im_start|>user" in tok.decode(ids)


class CharTokenizer:
    """Synthetic models carry no vocabulary: one token per character stands in."""

    model, bos_id, eos_id, chat_template = "char", None, None, None
    eog_ids = frozenset()

    def encode(self, text, add_special=True, parse_special=False):
        return [ord(c) % 512 for c in text]

    def decode(self, ids, skip_special=False):
        return " ".join(map(str, ids))


@pytest.fixture
def char_tokens(monkeypatch):
    monkeypatch.setattr(sides, "tokenizer_side",
                        lambda infos: SimpleNamespace(tokenizer=CharTokenizer(), instruct=False))


@requires_llama_cpp
def test_a_fault_flags_the_changed_prompts_and_the_diff_names_its_layer(synth_model, tmp_path,
                                                                          char_tokens):
    path = synth_model("llama", n_layer=4)
    config = BatteryConfig(a=f"engine:{path}", b=f"llamacpp:{path}",
                           prompts=("fact-capital", "long-recall"), max_tokens=4,
                           long_context=160, inject="transposed-block@2")
    outcome = run_battery(config, tmp_path / "run")
    assert [r.n_prompt for r in outcome.results] == [48, 160]
    for r in outcome.results:
        assert not r.agree and r.first_divergence is not None
        assert r.diff_diverged and (r.verdict_layer, r.verdict_tap) == (2, "attn_out")
        assert "local to that layer" in r.verdict
        assert (tmp_path / "run" / f"diff-{r.id}" / "verdict.json").exists()
    assert outcome.failed and "layer 2 `attn_out`" in outcome.summary_line()
    assert (tmp_path / "run" / "battery.json").exists()

    clean = run_battery(BatteryConfig(a=config.a, b=config.b, prompts=config.prompts,
                                      max_tokens=4, long_context=160), tmp_path / "clean")
    assert all(r.agree for r in clean.results) and not clean.failed

    base = baseline_of(clean, "r")
    result = compare(outcome, base, "r")
    assert not result.passed
    assert result.regressions[0].startswith("fact-capital: agreed in the baseline")
    md = markdown_summary(result, outcome)
    assert "| long-recall | long-context | ✗ |" in md and "layer 2" in md
    assert compare(clean, base, "r").passed


def test_battery_needs_a_tokenizer(synth_model, tmp_path):
    path = synth_model("llama")
    with pytest.raises(UsageError, match="needs a tokenizer"):
        run_battery(BatteryConfig(a=f"engine:{path}", b=f"llamacpp:{path}"), tmp_path)
    assert_one_line_error(impdiff("battery", "--model", str(path), "--prompts", "bogus"),
                          "unknown prompt")


def test_battery_recipe(tmp_path):
    good = tmp_path / "b.yaml"
    good.write_text("name: smoke\nkind: battery\nmodel: smollm2-135m\n"
                    "prompts: [fact-capital, long-recall]\nlong_context: 512\nmax_tokens: 8\n"
                    "inject: transposed-block@3\nbaseline: b.json\n")
    r = load_recipe(good)
    assert r.kind == "battery"
    assert (r.config.a, r.config.b) == ("engine:smollm2-135m", "llamacpp:smollm2-135m")
    assert r.config.prompts == ("fact-capital", "long-recall") and r.config.long_context == 512
    assert r.baseline == tmp_path / "b.json"
    for text, message in (("sweep: 128..256\n", "belongs to bracket recipes"),
                          ("prompts: [nope]\n", "unknown prompt"),
                          ("long_context: 8\n", "'long_context' must be")):
        bad = tmp_path / "bad.yaml"
        bad.write_text("name: x\nkind: battery\n" + text)
        with pytest.raises(UsageError, match=message):
            load_recipe(bad)
    bracket = tmp_path / "br.yaml"
    bracket.write_text("name: x\nsweep: 128..256\nprompts: [fact-capital]\n")
    with pytest.raises(UsageError, match="belongs to kind: battery"):
        load_recipe(bracket)


def test_gate_answer_regression():
    cfg = BatteryConfig(a="engine:m", b="llamacpp:m")
    def res(ok):
        return PromptResult("fact-capital", "fact", 9, [1], [1], "", "", ok, True, None)

    base = baseline_of(BatteryOutcome(cfg, ("engine", "llama.cpp"), [res(True)], False), "r")
    now = BatteryOutcome(cfg, ("engine", "llama.cpp"), [res(False)], False)
    result = compare(now, base, "r")
    assert result.regressions == ["fact-capital: engine answered right in the baseline, wrong now"]
