"""`impdiff convert` (GGUF -> BF16 -> NVFP4 in both layouts) and `impdiff ab`."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from impdiff.ab import ABConfig, ABOutcome, ModelSpec, PairResult, classify, parse_spec
from impdiff.convert import convert
from impdiff.engine import nvfp4
from impdiff.engine.generate import Session
from impdiff.engine.loader import load_model
from impdiff.errors import UsageError

from .conftest import HAS_LLAMA_CPP, real_model_or_skip, requires_llama_cpp

IDS = list(range(1, 48))


class _Proc:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def impdiff(capsys):
    """The command line in-process (main(): exit codes and one-line errors), output captured.
    (A subprocess costs seconds of torch import per call on a loaded 2-core machine; the
    subprocess path itself is covered in test_safetensors_loader and test_cli.)"""
    from impdiff import cli

    def run(*args):
        capsys.readouterr()
        old = sys.argv
        sys.argv = ["impdiff", *args]
        try:
            cli.main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            sys.argv = old
        out = capsys.readouterr()
        return _Proc(code, out.out, out.err)

    return run


def logits(loaded, ids=IDS):
    return Session(loaded.model, n_ctx=len(ids) + 8).eval(ids)


@pytest.fixture(scope="module")
def converted(synth_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("converted")
    out = {}
    for arch in ("llama", "gemma3"):
        g = synth_model(arch)
        out[arch, "gguf"] = g
        for target in ("f32", "bf16"):
            out[arch, target] = convert(g, root / f"{arch}-{target}", target).out
        for target in ("nvfp4-ct", "nvfp4-modelopt"):
            out[arch, target] = convert(out[arch, "bf16"], root / f"{arch}-{target}", target,
                                        calib_tokens=16).out
    return out


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_gguf_to_hf_round_trip(converted, arch):
    a = load_model(converted[arch, "gguf"], "cpu")
    f32 = load_model(converted[arch, "f32"], "cpu")
    bf16 = load_model(converted[arch, "bf16"], "cpu")
    assert a.cfg == f32.cfg == bf16.cfg
    la = logits(a)
    assert torch.allclose(logits(f32), la, atol=1e-4, rtol=1e-5)  # F32: the same weights
    assert (logits(bf16).argmax(-1) == la.argmax(-1)).float().mean() > 0.95
    src = json.loads((converted[arch, "f32"] / "impdiff_source.json").read_text())
    assert src["gguf"] == str(Path(converted[arch, "gguf"]).resolve())


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
@pytest.mark.parametrize("target,layout", [("nvfp4-ct", "compressed-tensors"),
                                           ("nvfp4-modelopt", "modelopt")])
def test_nvfp4_dirs_hold_the_quantised_bf16_weights(converted, arch, target, layout):
    """The engine's NVFP4 weights are exactly nvfp4.quantize(BF16) dequantised (both layouts)."""
    from impdiff.engine.safetensors_loader import open_checkpoint, permute_llama_qk

    q = load_model(converted[arch, target], "cpu")
    bf16 = load_model(converted[arch, "bf16"], "cpu")
    assert q.cfg == bf16.cfg and q.stats.format == f"NVFP4 ({layout})"
    assert q.stats.nvfp4_weights == 7 * q.cfg.n_layer
    src = open_checkpoint(converted[arch, "bf16"]).read("model.layers.1.mlp.down_proj.weight")
    t = nvfp4.quantize(src.float(), layout)
    names = nvfp4.TENSOR_NAMES[layout]
    mult = nvfp4.tensor_multiplier("w", float(t[names["global"]].reshape(())), layout)
    want = nvfp4.dequantize(t[names["packed"]], t[names["scale"]], mult)
    assert torch.equal(q.model.layers[1].w_down, want)
    # embeddings and norms stay BF16 and equal
    assert torch.equal(q.model.tok_embd, bf16.model.tok_embd)
    assert torch.equal(q.model.layers[0].attn_norm, bf16.model.layers[0].attn_norm)
    # and the result is still the same model, within 4-bit noise
    kl = torch.nn.functional.kl_div(torch.log_softmax(logits(q), -1),
                                    torch.log_softmax(logits(bf16), -1), log_target=True,
                                    reduction="batchmean")
    assert float(kl) < 0.2
    if arch == "llama":
        assert permute_llama_qk is not None


def test_sharded_conversion_loads_the_same(converted, tmp_path):
    out = convert(converted["llama", "gguf"], tmp_path / "sh", "bf16", shard_size=400_000)
    assert len(out.files) > 1 and (tmp_path / "sh" / "model.safetensors.index.json").exists()
    a = load_model(tmp_path / "sh", "cpu")
    b = load_model(converted["llama", "bf16"], "cpu")
    assert a.stats.files == len(out.files)
    assert torch.equal(logits(a), logits(b))


def test_convert_usage_errors(converted, tmp_path):
    with pytest.raises(UsageError, match="--to int8"):
        convert(converted["llama", "gguf"], tmp_path / "x", "int8")
    with pytest.raises(UsageError, match="already quantised"):
        convert(converted["llama", "nvfp4-ct"], tmp_path / "y", "nvfp4-modelopt")
    with pytest.raises(UsageError, match="not empty"):
        convert(converted["llama", "gguf"], converted["llama", "f32"], "f32")
    with pytest.raises(UsageError, match="already an HF directory"):
        convert(converted["llama", "f32"], tmp_path / "z", "bf16")


def test_convert_cli(converted, tmp_path, impdiff):
    proc = impdiff("convert", str(converted["llama", "gguf"]), "--to", "bf16", "--out",
                   str(tmp_path / "c"))
    assert proc.returncode == 0, proc.stderr
    assert "bf16, 21 tensors in 1 file(s)" in proc.stdout
    proc = impdiff("convert", str(converted["llama", "gguf"]), "--to", "q9", "--out",
                   str(tmp_path / "d"))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------------------------
# impdiff ab
# --------------------------------------------------------------------------------------------

def _pair(label, runtime, path, recall):
    r = PairResult(ModelSpec(label, runtime, Path(path), f"{runtime}:{path}"))
    r.recall = {n: {"passed": ok} for n, ok in recall.items()}
    return r


def _outcome(ref, pairs):
    o = ABOutcome(ABConfig(tuple(p.spec for p in pairs), ref.spec), ref, pairs, [512, 1024, 2048])
    classify(o)
    return o


def test_classify_model_limit_format_specific_engine_bug():
    ref = _pair("ref", "llamacpp", "/m/q4.gguf", {512: True, 1024: True, 2048: False})
    gguf = _pair("gguf", "engine", "/m/q4.gguf", {512: True, 1024: True, 2048: False})
    bf16 = _pair("bf16", "engine", "/m/bf16", {512: True, 1024: True, 2048: False})
    nv = _pair("nv", "engine", "/m/nv", {512: True, 1024: False, 2048: False})
    o = _outcome(ref, [gguf, bf16, nv])
    assert gguf.cells == {2048: "model limit"} and nv.cells == {1024: "format-specific",
                                                                2048: "model limit"}
    assert o.pair_agrees(gguf) and o.pair_agrees(bf16) and not o.pair_agrees(nv)
    assert o.answer() == ("model limit: the reference misses the sentinel at 2048; "
                          "format-specific: nv@1024; engine bug: none")
    # the engine fails on the reference's own file where llama.cpp passes: an engine bug
    gguf2 = _pair("gguf", "engine", "/m/q4.gguf", {512: False, 1024: True, 2048: False})
    o = _outcome(ref, [gguf2, bf16])
    assert gguf2.cells[512] == "engine bug" and "engine bug: gguf@512" in o.answer()
    # every engine format fails where the reference passes: engine bug, not a format
    a = _pair("a", "engine", "/m/a", {512: False, 1024: True, 2048: False})
    b = _pair("b", "engine", "/m/b", {512: False, 1024: True, 2048: False})
    o = _outcome(ref, [a, b])
    assert a.cells[512].startswith("engine bug") and not o.all_agree
    # a pair that recalls where the reference does not is no disagreement
    good = _pair("g", "engine", "/m/g", {512: True, 1024: True, 2048: True})
    assert _outcome(ref, [good]).all_agree


def test_logit_causes():
    ref = _pair("ref", "llamacpp", "/m/q4.gguf", {})
    same = _pair("gguf", "engine", "/m/q4.gguf", {})
    bf16 = _pair("bf16", "engine", "/m/bf16", {})
    other = _pair("q8", "llamacpp", "/m/q8.gguf", {})
    o = _outcome(ref, [same, bf16, other])
    same.logit_ok, bf16.logit_ok, other.logit_ok = True, False, False
    from impdiff.ab import logit_cause

    assert logit_cause(o, bf16) == "format-specific: gguf on the engine agrees"
    assert logit_cause(o, other) == "format-specific: same runtime as the reference"
    same.logit_ok = False
    assert logit_cause(o, same) == "engine bug: same file as the reference"
    assert logit_cause(o, bf16).startswith("format or engine")
    assert "engine bug: gguf logits" in o.answer()


def test_parse_spec(converted, tmp_path):
    s = parse_spec(f"mine=engine:{converted['llama', 'bf16']}")
    assert (s.label, s.runtime, s.path) == ("mine", "engine", converted["llama", "bf16"])
    assert parse_spec(f"llamacpp:{converted['llama', 'gguf']}").label.startswith("llamacpp:")
    for bad, fragment in [("vllm:x", "RUNTIME one of"), ("engine", "RUNTIME one of"),
                          (f"engine:{tmp_path / 'nope'}", "no such file"),
                          (f"llamacpp:{converted['llama', 'bf16']}", "GGUF files")]:
        with pytest.raises(UsageError, match=fragment):
            parse_spec(bad)


def test_ab_usage_errors_exit_2(converted, impdiff):
    proc = impdiff("ab", "--a", "vllm:foo", "--ref", f"llamacpp:{converted['llama', 'gguf']}")
    assert proc.returncode == 2 and "RUNTIME one of" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = impdiff("ab", "--ref", f"llamacpp:{converted['llama', 'gguf']}")
    assert proc.returncode == 2 and "at least one pair" in proc.stderr


@requires_llama_cpp
def test_ab_synthetic_formats_against_llamacpp(converted, tmp_path, impdiff):
    """F32 and GGUF on the engine agree with llama.cpp (exit 0); the NVFP4 copy of random
    weights does not meet the default thresholds and is called format-specific (exit 1)."""
    g = converted["llama", "gguf"]
    base = ["ab", "--ref", f"llamacpp:{g}", "--no-recall", "--tokens", "48"]
    proc = impdiff(*base, "--a", f"gguf=engine:{g}", "--b",
                   f"f32=engine:{converted['llama', 'f32']}", "--out", str(tmp_path / "ok"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "engine bug: none" in proc.stdout
    proc = impdiff(*base, "--a", f"gguf=engine:{g}", "--pair",
                   f"nv=engine:{converted['llama', 'nvfp4-ct']}", "--out", str(tmp_path / "nv"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = json.loads((tmp_path / "nv" / "ab.json").read_text())
    nv = out["pairs"][1]
    assert nv["logit_ok"] is False and nv["format"] == "NVFP4 (compressed-tensors)"
    assert "format-specific" in nv["verdict"] and out["answer"].endswith("engine bug: none")


# --------------------------------------------------------------------------------------------
# the real model in four formats (slow: converts once into a cache directory)
# --------------------------------------------------------------------------------------------

def _real_variants(gguf: Path) -> dict[str, Path]:
    cache = Path(os.environ.get("IMPDIFF_CONVERTED",
                                Path.home() / ".cache" / "impdiff" / "converted"))
    stamp = f"{gguf.resolve()}:{gguf.stat().st_size}"
    out = {}
    for target, src in (("bf16", None), ("nvfp4-ct", "bf16"), ("nvfp4-modelopt", "bf16")):
        d = cache / f"{gguf.stem}-{target}"
        ok = d / "impdiff_stamp.txt"
        if not (ok.exists() and ok.read_text() == stamp):
            convert(gguf if src is None else out[src], d, target, overwrite=True)
            ok.write_text(stamp)
        out[target] = d
    return out


@pytest.fixture(scope="module")
def real():
    """gemma3-270m converted to BF16 and both NVFP4 layouts, once, into a cache directory
    ($IMPDIFF_CONVERTED, default ~/.cache/impdiff/converted; about 2 minutes the first time)."""
    gguf = Path(real_model_or_skip("gemma3-270m"))
    return {"gguf": gguf, **_real_variants(gguf)}


@pytest.mark.slow
@pytest.mark.skipif(not HAS_LLAMA_CPP, reason="llama-cpp-python not installed")
def test_real_gemma3_in_every_format_vs_llamacpp(real):
    """gemma3-270m as BF16 SafeTensors and NVFP4 (both layouts) on the engine against llama.cpp
    on the Q4_K_M GGUF they were converted from: BF16 agrees like the GGUF itself does; NVFP4
    stays the same model (a decoding bug - nibble order, a scale level - gives KL >> 1)."""
    from impdiff.compare.metrics import logit_metrics
    from impdiff.prompts import filler_ids
    from impdiff.runtimes.llamacpp import LlamaCppRuntime

    gguf = real["gguf"]
    variants = {k: v for k, v in real.items() if k != "gguf"}
    bf16 = load_model(variants["bf16"], "cpu")
    ids = filler_ids(bf16.tokenizer, 64)
    with LlamaCppRuntime(gguf, n_ctx=96) as ref:
        ref_logits = ref.eval(ids).logits
    got = {}
    for name, d in variants.items():
        m = bf16 if name == "bf16" else load_model(d, "cpu")
        mm = logit_metrics(logits(m, ids).numpy(), ref_logits)
        got[name] = (float(mm["top1"].mean()), float(mm["kl"].mean()))
        del m
    assert got["bf16"][0] >= 0.95 and got["bf16"][1] < 0.02, got
    for name in ("nvfp4-ct", "nvfp4-modelopt"):
        assert got[name][0] >= 0.6 and got[name][1] < 0.5, got
    assert np.isfinite([v for pair in got.values() for v in pair]).all()
