"""`NAME:MODEL` runtime specs, the registry (built-ins and entry-point plug-ins), and the diff
between any two of them: two files on one runtime, one file on two runtimes."""

from __future__ import annotations

import importlib.metadata

import numpy as np
import pytest

from impdiff.errors import UsageError
from impdiff.runtimes import registry
from impdiff.runtimes.base import Runtime
from impdiff.runtimes.registry import RuntimeSpec, parse_spec
from impdiff.sides import side_specs

from .conftest import requires_llama_cpp
from .test_cli import assert_one_line_error, impdiff


def test_parse_spec_names_runtime_and_model(tmp_path):
    assert parse_spec("engine:x.gguf") == RuntimeSpec("engine", "x.gguf")
    assert parse_spec("llama.cpp:gemma3-270m") == RuntimeSpec("llamacpp", "gemma3-270m")
    assert parse_spec("hf:models/dir") == RuntimeSpec("transformers", "models/dir")
    assert parse_spec("dump:runs/d1") == RuntimeSpec("dump", "runs/d1")
    assert parse_spec("x.gguf", "llamacpp") == RuntimeSpec("llamacpp", "x.gguf")
    with pytest.raises(UsageError, match="unknown runtime 'vllm'.*engine, llamacpp"):
        parse_spec("vllm:x.gguf", "engine")
    with pytest.raises(UsageError, match="expected RUNTIME:MODEL"):
        parse_spec("x.gguf")
    with pytest.raises(UsageError, match="nothing after"):
        parse_spec("engine:")
    odd = tmp_path / "run:3.gguf"  # an existing path with a colon is a path
    odd.write_bytes(b"")
    assert parse_spec(str(odd), "engine") == RuntimeSpec("engine", str(odd))


def test_side_specs_defaults():
    assert side_specs("m.gguf", None, None) == (RuntimeSpec("engine", "m.gguf"),
                                                 RuntimeSpec("llamacpp", "m.gguf"))
    assert side_specs(None, None, None) == (RuntimeSpec("engine", "gemma3-270m"),
                                            RuntimeSpec("llamacpp", "gemma3-270m"))
    # a side left out runs the other side's model on its default runtime
    assert side_specs(None, "transformers:m.gguf", None)[1] == RuntimeSpec("llamacpp", "m.gguf")
    assert side_specs(None, None, "engine:q8.gguf")[0] == RuntimeSpec("engine", "q8.gguf")
    assert side_specs(None, "a.gguf", "b.gguf") == (RuntimeSpec("engine", "a.gguf"),
                                                    RuntimeSpec("llamacpp", "b.gguf"))
    with pytest.raises(UsageError, match="give --b"):
        side_specs(None, "dump:runs/d1", None)


def test_capabilities_of_builtins():
    assert registry.get_factory("engine").patches and registry.get_factory("engine").faults
    for name in ("llamacpp", "transformers", "dump"):
        f = registry.get_factory(name)
        assert not f.patches and not f.faults
    assert registry.get_factory("llama.cpp").display == "llama.cpp"


class Replay(Runtime):
    """A plug-in runtime for the test: the engine, under another name."""

    name = "replay"

    def __init__(self, target, **options):
        from impdiff.runtimes.engine import EngineRuntime

        self.inner = EngineRuntime(target, taps=options.get("taps"), n_ctx=options["n_ctx"],
                                   n_ubatch=options["n_ubatch"], device="cpu")
        self.options = options

    def eval(self, token_ids, last_only=False):
        return self.inner.eval(token_ids, last_only)

    def reset(self):
        self.inner.reset()

    def close(self):
        pass

    @property
    def position(self):
        return self.inner.position


def open_replay(target, **options):
    return Replay(target, **options)


@pytest.fixture
def replay_plugin(monkeypatch):
    """An `impdiff.runtimes` entry point, as an installed package would declare it."""
    ep = importlib.metadata.EntryPoint(name="replay", value=f"{__name__}:open_replay",
                                       group=registry.ENTRY_POINT_GROUP)
    real = importlib.metadata.entry_points

    def fake(**kw):
        if kw.get("group") == registry.ENTRY_POINT_GROUP:
            return [ep]
        return real(**kw)

    monkeypatch.setattr(importlib.metadata, "entry_points", fake)
    monkeypatch.setattr(registry, "_plugins", None)
    yield
    registry._plugins = None


def test_entry_point_plugin_runs_in_a_diff(replay_plugin, synth_model):
    from impdiff.diff import run_diff

    assert "replay" in registry.known()
    path = synth_model("llama")
    spec = parse_spec(f"replay:{path}")
    assert spec.runtime == "replay" and not spec.factory.patches
    ids = np.random.default_rng(0).integers(0, 512, 24).tolist()
    outcome = run_diff(None, ids, a=spec, b=f"engine:{path}")
    assert not outcome.diverged
    assert outcome.labels == ("replay", "engine")
    assert outcome.logits["top1"] == 1.0 and outcome.logits["kl_max"] < 1e-9
    assert not outcome.lockstep.only_a and not outcome.lockstep.only_b


def test_plugin_cannot_shadow_a_builtin(monkeypatch):
    ep = importlib.metadata.EntryPoint(name="engine", value=f"{__name__}:open_replay",
                                       group=registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda **kw: [ep] if kw.get("group") == registry.ENTRY_POINT_GROUP
                        else [])
    monkeypatch.setattr(registry, "_plugins", None)
    assert registry.get_factory("engine") is registry.BUILTIN["engine"]
    registry._plugins = None


def test_inject_needs_an_engine_side(synth_model):
    path = synth_model("llama")
    assert_one_line_error(impdiff("diff", "--a", f"llamacpp:{path}", "--b", f"engine:{path}",
                                  "--inject", "embed-scale", "--tokens", "8"),
                          "--inject applies to engine runtimes")


@requires_llama_cpp
def test_two_files_on_one_runtime_and_one_file_on_two(synth_model, tmp_path):
    """The same command form: engine:Q8_0 vs engine:F32 (clean, then with a fault in --a),
    and engine vs llama.cpp on the Q8_0 file. (`--model M` is covered by test_cli.)"""
    import json

    from impdiff.diff import run_diff

    q8, f32 = synth_model("gemma3", "Q8_0"), synth_model("gemma3")
    ids = np.random.default_rng(0).integers(0, 512, 64).tolist()
    clean = run_diff(None, ids, a=f"engine:{q8}", b=f"engine:{f32}")
    assert not clean.diverged, clean.verdict.sentence(*clean.labels)
    assert clean.labels == (f"engine:{q8.name}", f"engine:{f32.name}")

    proc = impdiff("diff", "--a", f"engine:{q8}", "--b", f"engine:{f32}", "--tokens", "64",
                   "--inject", "swa-on-global", "--out", str(tmp_path / "fault"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert (f"engine:{q8.name} diverges from engine:{f32.name} at layer 5 (global attention), "
            "`kqv`") in " ".join(proc.stdout.split())
    record = json.loads((tmp_path / "fault" / "verdict.json").read_text())
    assert record["runtimes"]["a"] == f"engine:{q8}" and record["runtimes"]["b"] == f"engine:{f32}"
    assert record["verdict"]["substitution"] == "local to that layer"

    proc = impdiff("diff", "--a", f"engine:{q8}", "--b", f"llamacpp:{q8}", "--tokens", "64",
                   "--out", str(tmp_path / "runtimes"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "engine agrees with llama.cpp" in proc.stdout
