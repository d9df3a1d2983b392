"""Bracket logic: boundary search, bisection, resumable run directories."""

from __future__ import annotations

import json

import pytest

import numpy as np

from impdiff.bracket import (Bracket, BracketConfig, BracketOutcome, RecallResult, RunDir,
                             bracket_sides, find_boundary, find_result, run_bracket)
from impdiff.errors import UsageError

from .conftest import requires_llama_cpp
from .test_cli import assert_one_line_error, impdiff


def fake_check(engine_limit: int, ref_limit: int = 10**9, calls=None):
    def check(runtime, length, phase):
        if calls is not None:
            calls.append((runtime, length))
        limit = engine_limit if runtime == "engine" else ref_limit
        return RecallResult(runtime, length, length, length < limit, "1", "", 0.0, phase)
    return check


def test_boundary_is_bisected_to_the_resolution():
    b = find_boundary([128, 512, 1024, 1536], fake_check(1100), 32)
    assert b["last_pass"] < 1100 <= b["first_fail"]
    assert b["first_fail"] - b["last_pass"] <= 32


def test_no_boundary_when_engine_passes_or_both_fail():
    assert find_boundary([128, 512], fake_check(10**9), 32) is None
    assert find_boundary([128, 512, 1024], fake_check(600, ref_limit=600), 32) is None


def test_boundary_found_below_a_length_where_both_fail():
    # at 2048 both fail (model limit); at 1400 only the engine does
    b = find_boundary([512, 1400, 2048], fake_check(1000, ref_limit=1500), 32)
    assert b["last_pass"] < 1000 <= b["first_fail"] <= 1032


def test_bisection_stops_where_the_reference_fails_too():
    def check(runtime, length, phase):
        ok = length < 700 if runtime == "engine" else not 600 <= length < 800
        return RecallResult(runtime, length, length, ok, "1", "", 0.0, phase)
    # the first probe (768) fails on both runtimes: the bracket stays as wide as it was
    assert find_boundary([512, 1024], check, 8) == {"last_pass": 512, "first_fail": 1024,
                                                    "resolution": 8}


def test_run_dir_resumes_and_skips_a_cut_line(tmp_path):
    cfg = BracketConfig("m", (128, 256))
    run = RunDir(tmp_path, cfg, {"command": "x"})
    r = RecallResult("engine", 128, 128, True, "7", " 7", 1.0, "sweep")
    run.append(r)
    with open(run.results_path, "a") as f:
        f.write('{"runtime": "llamacpp", "len')  # an interrupted write
    resumed = RunDir(tmp_path, cfg, {"command": "x"})
    again = resumed.load()
    assert again == [r]
    r2 = RecallResult("llamacpp", 128, 128, True, "7", " 7", 1.0, "sweep")
    resumed.append(r2)
    assert resumed.load() == [r, r2]  # the cut line does not swallow the next result
    assert find_result(again, "engine", 128) == r
    with pytest.raises(UsageError, match="another configuration"):
        RunDir(tmp_path, BracketConfig("m", (512,)), {})
    assert json.loads((tmp_path / "run.json").read_text())["config"]["sweep"] == [128, 256]


# ------------------------------------------------------------------ runtime specs (--a / --b)

def test_runtime_specs_fill_the_two_roles():
    assert bracket_sides(None, None, None) == ("gemma3-270m", "", "")
    assert bracket_sides("m.gguf", None, None) == ("m.gguf", "", "")
    # a side left out takes the other side's model on its default runtime, as in `diff`
    assert bracket_sides(None, "transformers:x.gguf", None) == (
        "x.gguf", "transformers:x.gguf", "llamacpp:x.gguf")
    assert BracketConfig("m", (64,)).labels() == {"engine": "engine", "llamacpp": "llama.cpp"}
    c = BracketConfig("x", (64,), a="transformers:x.gguf", b="llamacpp:x.gguf")
    assert c.labels() == {"engine": "transformers", "llamacpp": "llama.cpp"}
    two_files = BracketConfig("x", (64,), a="engine:d/q4.gguf", b="engine:d/q8.gguf")
    assert two_files.labels() == {"engine": "engine:q4.gguf", "llamacpp": "engine:q8.gguf"}
    outcome_line = BracketOutcome(two_files, [], {"last_pass": 32, "first_fail": 64}, []
                                  ).summary_line()
    assert outcome_line.startswith("engine:q4.gguf fails sentinel recall from 64 tokens "
                                   "while engine:q8.gguf passes")
    with pytest.raises(UsageError, match="a bracket generates at many lengths"):
        BracketConfig("x", (64,), a="dump:some/dir", b="llamacpp:x.gguf").validate()


def test_recipe_takes_runtime_specs(tmp_path):
    from impdiff.recipes import load_recipe

    r = tmp_path / "r.yaml"
    r.write_text("name: t\nsweep: 64,128\na: transformers:x.gguf\n")
    c = load_recipe(r).config
    assert (c.model, c.a, c.b) == ("x.gguf", "transformers:x.gguf", "llamacpp:x.gguf")


@requires_llama_cpp
def test_two_files_on_one_runtime_open_what_the_specs_name(synth_model, tmp_path):
    q4, q8 = synth_model("gemma3", "Q4_K_M"), synth_model("gemma3", "Q8_0")
    config = BracketConfig(str(q8), (24,), a=f"engine:{q4}", b=f"engine:{q8}",
                           criterion="agreement", max_tokens=2)
    br = Bracket(config, RunDir(tmp_path / "run", config, {}))
    try:
        a, b = br.runtime("engine"), br.runtime("llamacpp")
        assert a.loaded is br.loaded and b.loaded is not br.loaded  # both engines, two files
        ids = list(range(1, 9))
        assert not np.allclose(a.eval(ids).logits, b.eval(ids).logits)
    finally:
        br.close()


@requires_llama_cpp
def test_bracket_with_specs_finds_the_fault_and_diffs_the_specs(synth_model, tmp_path):
    path = synth_model("gemma3")  # sliding window 32: swa-on-global bites past 32 tokens
    config = BracketConfig(str(path), (24, 64), a=f"engine:{path}", b=f"llamacpp:{path}",
                           max_tokens=4, inject="swa-on-global", resolution=8,
                           criterion="agreement")
    outcome = run_bracket(config, path, tmp_path / "run", "test")
    assert outcome.boundary is not None and outcome.boundary["first_fail"] + 4 > 32
    assert outcome.diff.labels == ("engine", "llama.cpp")
    assert outcome.diff.verdict.diverged and outcome.diff.verdict.tap is not None


def test_cli_bracket_refuses_a_fault_on_another_runtime(synth_model, tmp_path):
    path = synth_model("gemma3")
    assert_one_line_error(impdiff("bracket", "--a", f"transformers:{path}", "--b",
                                  f"llamacpp:{path}", "--inject", "swa-on-global", "--sweep",
                                  "64", "--criterion", "agreement", "--out",
                                  str(tmp_path / "r")),
                          "--inject applies to engine runtimes")
    assert_one_line_error(impdiff("bracket", "--a", f"dump:{tmp_path}", "--b",
                                  f"llamacpp:{path}", "--sweep", "64"),
                          "a bracket generates at many lengths")


@requires_llama_cpp
def test_cli_bracket_names_the_sides_by_their_specs(synth_model, tmp_path):
    q4, q8 = synth_model("gemma3", "Q4_K_M"), synth_model("gemma3", "Q8_0")
    proc = impdiff("bracket", "--a", f"engine:{q4}", "--b", f"engine:{q8}", "--criterion",
                   "agreement", "--sweep", "24", "--max-tokens", "2", "--no-diff", "--out",
                   str(tmp_path / "run"))
    assert proc.returncode in (0, 1), proc.stderr
    out = " ".join(proc.stdout.split())
    assert f"agreement with engine:{q8.name}" in out
    assert f"recall checks: engine:{q4.name} " in out and f", engine:{q8.name} " in out
    config = json.loads((tmp_path / "run" / "run.json").read_text())["config"]
    assert (config["a"], config["b"]) == (f"engine:{q4}", f"engine:{q8}")
