"""Shared fixtures: synthetic models are generated once per session into a temp dir."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

# Without a GPU the Triton kernels run in Triton's interpreter; it must be chosen before any
# kernel module is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from impdiff.testing.synthetic import make_model

HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None

requires_llama_cpp = pytest.mark.skipif(not HAS_LLAMA_CPP, reason="llama-cpp-python not installed")


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory):
    """$IMPDIFF_SYNTHETIC_DIR if set: models made beforehand and reused (a GPU machine without
    llama.cpp's quantiser), else a fresh directory."""
    made = os.environ.get("IMPDIFF_SYNTHETIC_DIR")
    return Path(made) if made else tmp_path_factory.mktemp("synthetic")


@pytest.fixture(scope="session")
def synth_model(synth_dir):
    """make(arch, qtype='F32') -> path of a seeded synthetic GGUF."""

    def make(arch: str, qtype: str = "F32", **overrides):
        return make_model(arch, synth_dir, qtype, **overrides)

    return make


def real_model_or_skip(name: str):
    from impdiff.real_models import REAL_MODELS

    path = REAL_MODELS[name].locate()
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path
