"""The command line's contract: exit codes 0/1/2 and one-line errors for bad input."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import requires_llama_cpp


def impdiff(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "impdiff", *args], capture_output=True,
                          text=True, timeout=600, cwd=cwd)


def assert_one_line_error(proc, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_truncated_gguf(synth_model, tmp_path):
    bad = tmp_path / "truncated.gguf"
    bad.write_bytes(synth_model("llama").read_bytes()[:5000])
    assert_one_line_error(impdiff("run", "--model", str(bad)), "truncated.gguf", "truncated")


def test_unknown_architecture(tmp_path):
    import gguf
    import numpy as np

    path = tmp_path / "rwkv.gguf"
    w = gguf.GGUFWriter(str(path), "rwkv6")
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    assert_one_line_error(impdiff("run", "--model", str(path)), "rwkv6", "supported: gemma3")


def test_not_a_gguf(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    assert_one_line_error(impdiff("run", "--model", str(path)), "notes.txt", "not a GGUF file")


def test_missing_file_and_bad_options(tmp_path):
    assert_one_line_error(impdiff("run", "--model", str(tmp_path / "nope.gguf")), "nope.gguf")
    proc = impdiff("diff", "--model", str(tmp_path / "nope.gguf"), "--taps", "bogus")
    assert proc.returncode == 2


def test_unknown_tap_and_fault_names(synth_model):
    path = str(synth_model("llama"))
    assert_one_line_error(impdiff("diff", "--model", path, "--taps", "l_out,bogus"),
                          "--taps", "bogus")
    assert_one_line_error(impdiff("run", "--model", path, "--inject", "nope"), "unknown fault")


def test_an_unknown_fusion_is_one_line_before_the_run(synth_model):
    import os

    env = {**os.environ, "IMPDIFF_FUSIONS": "rope,bogus", "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-m", "impdiff", "bench", "-m",
                           str(synth_model("llama")), "--runtimes", "engine", "--engine-path",
                           "fast", "--device", "cpu", "-p", "0", "-n", "1", "-r", "1"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert_one_line_error(proc, "impdiff: error: IMPDIFF_FUSIONS", "'bogus'", "branches, rope")


@requires_llama_cpp
@pytest.mark.parametrize("inject, expected", [(None, 0), ("swa-on-global", 1)])
def test_diff_exit_code_follows_the_verdict(synth_model, tmp_path, inject, expected):
    args = ["diff", "--model", str(synth_model("gemma3")), "--tokens", "80",
            "--out", str(tmp_path / "run")]
    if inject:
        args += ["--inject", inject]
    proc = impdiff(*args)
    assert proc.returncode == expected, proc.stdout + proc.stderr
    assert (tmp_path / "run" / "taps.parquet").exists()
    if inject:
        assert "layer 5 (global attention)" in proc.stdout
        assert "positions ≥ 32" in proc.stdout
