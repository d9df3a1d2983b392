"""`impdiff gate`: the regression rules, the CI artefacts, and the exit codes on a real model."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from impdiff.bracket import BracketConfig, BracketOutcome, RecallResult
from impdiff.gate import baseline_of, compare, junit_xml, markdown_summary

from .conftest import real_model_or_skip, requires_llama_cpp
from .test_cli import impdiff

DATA = Path(__file__).parent / "data"


def outcome(passes: dict[tuple[str, int], bool], boundary=None) -> BracketOutcome:
    results = [RecallResult(rt, n, n, ok, "7311", " 7311." if ok else " 1234", 0.1, "sweep")
               for (rt, n), ok in passes.items()]
    config = BracketConfig("m", tuple(sorted({n for _, n in passes})))
    return BracketOutcome(config, results, boundary, [])


BASE = {("engine", 512): True, ("llamacpp", 512): True,
        ("engine", 1024): True, ("llamacpp", 1024): True}


def test_same_results_pass():
    base = baseline_of(outcome(BASE), "r")
    assert compare(outcome(BASE), base, "r").passed


def test_a_length_that_passed_and_now_fails_is_a_regression():
    base = baseline_of(outcome(BASE), "r")
    now = outcome({**BASE, ("engine", 1024): False},
                  {"last_pass": 512, "first_fail": 1024, "resolution": 32})
    result = compare(now, base, "r")
    assert not result.passed
    assert "engine passed at 1024 tokens in the baseline and fails now" in result.regressions


def test_boundary_moving_down_is_a_regression_and_up_is_not():
    failing = {**BASE, ("engine", 1024): False}
    base = baseline_of(outcome(failing, {"last_pass": 900, "first_fail": 928}), "r")
    lower = outcome(failing, {"last_pass": 700, "first_fail": 736})
    higher = outcome(failing, {"last_pass": 960, "first_fail": 992})
    assert not compare(lower, base, "r").passed
    assert compare(higher, base, "r").passed


def test_junit_and_markdown():
    base = baseline_of(outcome(BASE), "r")
    now = outcome({**BASE, ("engine", 1024): False})
    result = compare(now, base, "r")
    suite = ET.fromstring(junit_xml(result, 1.0))
    assert suite.get("failures") == "1"
    assert len(suite.findall("testcase")) == len(result.checks)
    md = markdown_summary(result, now)
    assert "❌ regression" in md and "| 1024 | ✗ | ✓ |" in md


@requires_llama_cpp
@pytest.mark.slow
@pytest.mark.parametrize("inject, expected", [("swa-on-global", 1), (None, 0)])
def test_gate_exit_code_on_real_model(tmp_path, inject, expected):
    real_model_or_skip("gemma3-270m")
    args = ["gate", str(DATA / "gate-small.yaml"), "--out", str(tmp_path / "run")]
    if inject:
        args += ["--inject", inject]
    proc = impdiff(*args)
    assert proc.returncode == expected, proc.stdout + proc.stderr
    suite = ET.parse(tmp_path / "run" / "junit.xml").getroot()
    assert (suite.get("failures") != "0") == bool(expected)
    assert (tmp_path / "run" / "summary.md").exists()
    assert (tmp_path / "run" / "results.jsonl").exists()
