"""Tap dumps: the format round-trips any runtime, a bad dump is bad input, and a dump written by
a separate process that does not import impdiff is diffed against llama.cpp to the fault."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from impdiff.engine.errors import ModelLoadError
from impdiff.runtimes.base import RuntimeEvalError
from impdiff.runtimes.dump import DumpRuntime, parse_tensor_name, read_manifest, write_dump
from impdiff.runtimes.engine import EngineRuntime
from impdiff.taps import TapSelection

from .conftest import requires_llama_cpp
from .test_cli import assert_one_line_error, impdiff

PRODUCER = Path(__file__).resolve().parents[1] / "examples" / "dump_producer.py"


def test_tensor_names():
    assert parse_tensor_name("l_out.5") == ("l_out", 5)
    assert parse_tensor_name("inp_embd") == ("inp_embd", -1)
    assert parse_tensor_name("blk.3.x") is None


def test_round_trip_in_any_chunking(synth_model, tmp_path):
    path = synth_model("llama")
    ids = np.random.default_rng(1).integers(0, 512, 40).tolist()
    eng = EngineRuntime(path, taps=TapSelection(), n_ctx=64)
    write_dump(eng, ids, tmp_path / "d", chunk=16, producer={"name": "test"},
               model={"arch": "llama", "n_layer": 2})
    man = read_manifest(tmp_path / "d")
    assert [c["start"] for c in man["chunks"]] == [0, 16, 32]
    assert man["layouts"]["Qcur"] == "heads" and man["layouts"]["l_out"] == "hidden"

    eng.reset()
    dump = DumpRuntime(tmp_path / "d", taps=TapSelection())
    for lo, hi in ((0, 10), (10, 33), (33, 40)):  # chunks that straddle the recorded ones
        a, b = eng.eval(ids[lo:hi]), dump.eval(ids[lo:hi])
        assert a.start == b.start == lo
        # the engine's own rounding differs a little between chunkings
        np.testing.assert_allclose(a.logits, b.logits, rtol=1e-4, atol=1e-4)
        assert a.taps.keys() == b.taps.keys()
        for key in a.taps:
            np.testing.assert_allclose(a.taps[key], b.taps[key], rtol=1e-4, atol=1e-4)
    dump.reset()
    last = dump.eval(ids[:5], last_only=True)
    assert last.logits.shape == (1, 512)
    with pytest.raises(RuntimeEvalError, match="recorded token"):
        dump.eval([(ids[5] + 1) % 512])
    dump.reset()
    with pytest.raises(RuntimeEvalError, match="recorded 40 positions"):
        dump.eval(ids + ids[:1])


def _write(tmp_path, manifest: dict, tensors: dict | None = None) -> Path:
    from safetensors.numpy import save_file

    d = tmp_path / "bad"
    d.mkdir(exist_ok=True)
    save_file(tensors or {"logits": np.zeros((2, 8), np.float32)}, str(d / "c0.safetensors"))
    (d / "manifest.json").write_text(json.dumps(manifest))
    return d


GOOD = {"format": "impdiff-tap-dump", "version": 1, "layouts": {"l_out": "hidden"},
        "chunks": [{"file": "c0.safetensors", "start": 0, "token_ids": [1, 2],
                    "positions": [0, 1]}]}


@pytest.mark.parametrize("change, message", [
    ({"format": "x"}, "'format' must be"),
    ({"version": 9}, "version"),
    ({"layouts": {"Qcur": "flat"}}, "tap 'Qcur' is recorded as 'flat'"),
    ({"chunks": [{**GOOD["chunks"][0], "positions": [0, 2]}]}, "'positions' must be 0..1"),
    ({"chunks": [{**GOOD["chunks"][0], "start": 4}]}, "'start' is 4, expected 0"),
    ({"chunks": [{**GOOD["chunks"][0], "file": "nope.safetensors"}]}, "missing"),
])
def test_bad_manifests_are_named(tmp_path, change, message):
    d = _write(tmp_path, {**GOOD, **change})
    with pytest.raises(ModelLoadError, match=message):
        DumpRuntime(d)


def test_bad_tensors_are_named(tmp_path):
    d = _write(tmp_path, GOOD, {"l_out.0": np.zeros((2, 4), np.float32)})
    with pytest.raises(ModelLoadError, match="no 'logits'"):
        DumpRuntime(d)
    d = _write(tmp_path, GOOD, {"logits": np.zeros((3, 8), np.float32)})
    with pytest.raises(ModelLoadError, match="first dimension must be the chunk's 2"):
        DumpRuntime(d)


def test_cli_bad_dump_and_prompt_with_dump(synth_model, tmp_path):
    d = _write(tmp_path, {**GOOD, "format": "x"})
    path = synth_model("llama")
    assert_one_line_error(impdiff("diff", "--a", f"dump:{d}", "--b", f"llamacpp:{path}"),
                          "'format' must be")
    from impdiff.errors import UsageError
    from impdiff.runtimes.registry import RuntimeSpec, describe
    from impdiff.sides import side_token_ids

    d = _write(tmp_path, GOOD)
    infos = [describe(RuntimeSpec("dump", str(d))), describe(RuntimeSpec("llamacpp", str(path)))]
    assert side_token_ids(infos) == [1, 2]
    with pytest.raises(UsageError, match="is a dump: the token ids are the recorded ones"):
        side_token_ids(infos, n_tokens=8)


def run_producer(model: Path, out: Path, *args: str) -> None:
    """The example producer in its own process, with any import of impdiff made to fail."""
    code = ("import runpy, sys; sys.modules['impdiff'] = None; "
            f"sys.argv = {[str(PRODUCER), str(model), '--out', str(out), *args]!r}; "
            f"runpy.run_path({str(PRODUCER)!r}, run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_producer_refuses_a_fault_on_a_missing_layer(synth_model, tmp_path):
    model = synth_model("llama", n_layer=2)
    proc = subprocess.run([sys.executable, str(PRODUCER), str(model), "--out",
                           str(tmp_path / "d"), "--fault", "scale-attn-out@2=1.5"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "has layers 0..1" in proc.stderr, proc.stderr
    assert not (tmp_path / "d").exists()


def test_producer_does_not_import_impdiff():
    import re

    source = PRODUCER.read_text()
    assert not re.search(r"^\s*(import|from)\s+impdiff", source, re.M)


@requires_llama_cpp
def test_external_dump_with_a_fault_is_localised(synth_model, tmp_path):
    model = synth_model("llama", n_layer=4)
    run_producer(model, tmp_path / "faulty", "--tokens", "40", "--chunk", "16",
                 "--fault", "scale-attn-out@2=1.5")
    man = read_manifest(tmp_path / "faulty")
    assert man["producer"]["faults"] == ["scale-attn-out@2=1.5"]
    proc = impdiff("diff", "--a", f"dump:{tmp_path / 'faulty'}", "--b", f"llamacpp:{model}",
                   "--out", str(tmp_path / "r1"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "diverges from llama.cpp at layer 2, `attn_out`" in proc.stdout, proc.stdout
    assert "substitution check: not run" in proc.stdout

    from impdiff.diff import run_diff

    run_producer(model, tmp_path / "clean", "--tokens", "40", "--chunk", "16")
    outcome = run_diff(None, None, a=f"dump:{tmp_path / 'clean'}", b=f"llamacpp:{model}")
    assert not outcome.diverged and outcome.labels == ("dump:clean", "llama.cpp")
    assert outcome.logits["top1"] == 1.0


@requires_llama_cpp
def test_impdiff_dump_from_the_engine_replays_to_the_fault(synth_model, tmp_path):
    model = synth_model("gemma3")
    d = tmp_path / "eng"
    proc = impdiff("dump", "--runtime", f"engine:{model}", "--tokens", "64", "--chunk", "32",
                   "--inject", "swa-on-global", "--out", str(d))
    assert proc.returncode == 0, proc.stderr
    man = read_manifest(d)
    assert man["producer"]["runtime"] == f"engine:{model}"
    assert man["producer"]["inject"] == "swa-on-global"
    assert man["model"]["n_layer"] == 6 and man["model"]["layer_kinds"]["5"] == "global attention"
    proc = impdiff("diff", "--a", f"dump:{d}", "--b", f"llamacpp:{model}",
                   "--out", str(tmp_path / "r"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "at layer 5 (global attention), `kqv`, positions ≥ 32" in proc.stdout
