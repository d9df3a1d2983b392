"""Recipe validation: every mistake is one clear UsageError naming the file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from impdiff.bracket import parse_sweep
from impdiff.errors import UsageError
from impdiff.recipes import load_recipe

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


def test_committed_recipes_load():
    for path in sorted((ROOT / "recipes").glob("*.yaml")):
        r = load_recipe(path)
        assert r.baseline is not None and r.baseline.exists(), path
        if r.kind == "bracket":
            assert r.config.sweep, path


@pytest.mark.parametrize("text, fragment", [
    ("name: x\nsweep: 128..256\nsweeep: 1\n", "unknown key 'sweeep'"),
    ("name: x\nsweep: 128..256\ndepth: 1.5\n", "'depth' must be a number from 0 to 1"),
    ("name: x\nsweep: 128..256\ndepth: yes\n", "'depth' must be"),
    ("name: x\nsweep: 128..256\nruntimes: [engine, vllm]\n", "'runtimes' must be"),
    ("sweep: 128..256\n", "required key 'name'"),
    ("name: x\nsweep: 256..128\n", "'sweep': expected LO..HI"),
    ("name: x\nsweep: [128, 256\n", "not valid YAML at line"),
    ("- a\n- b\n", "mapping of keys"),
    ("name: x\nsweep: 128..256\nmax_tokens: 0\n", "'max_tokens' must be a positive integer"),
])
def test_bad_recipes(tmp_path, text, fragment):
    with pytest.raises(UsageError) as info:
        load_recipe(write(tmp_path, text))
    assert fragment in str(info.value)
    assert "r.yaml" in str(info.value)


def test_yaml_is_safe_loaded(tmp_path):
    with pytest.raises(UsageError, match="not valid YAML"):
        load_recipe(write(tmp_path, "name: !!python/object/apply:os.system ['true']\n"
                                    "sweep: 128..256\n"))


def test_sweep_forms():
    assert parse_sweep("128..512") == [128, 256, 384, 512]
    assert parse_sweep("128..600:256") == [128, 384, 600]
    assert parse_sweep("1536,512,1024") == [512, 1024, 1536]
    for bad in ("", "a..b", "0..10", "10..5", "1,-2"):
        with pytest.raises(UsageError):
            parse_sweep(bad)
