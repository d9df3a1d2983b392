"""Bracket logic: boundary search, bisection, resumable run directories."""

from __future__ import annotations

import json

import pytest

from impdiff.bracket import (BracketConfig, RecallResult, RunDir, find_boundary, find_result)
from impdiff.errors import UsageError


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
