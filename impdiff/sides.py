"""The two sides of a comparison from the command line: `--model`, `--a`, `--b`, and the token
ids both of them evaluate.

`--model M` alone is `--a engine:M --b llamacpp:M`. A side left out takes the other side's model
on its default runtime (`--a transformers:M` compares against `llamacpp:M`). A bare path is
`engine:` for `--a` and `llamacpp:` for `--b`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import UsageError
from .real_models import DEFAULT_MODEL
from .runtimes.registry import ModelInfo, RuntimeSpec, parse_spec


def side_specs(model: str | None, a: str | None, b: str | None) -> tuple[RuntimeSpec, RuntimeSpec]:
    sa = parse_spec(a, "engine", "--a") if a else None
    sb = parse_spec(b, "llamacpp", "--b") if b else None
    if model is not None or (sa is None and sb is None):
        m = model or DEFAULT_MODEL
        sa = sa or RuntimeSpec("engine", m)
        sb = sb or RuntimeSpec("llamacpp", m)
    if sa is None:
        if sb.factory.target != "model":
            raise UsageError(f"--b {sb}: give --a too (a {sb.runtime} side names no model)")
        sa = RuntimeSpec("engine", sb.target)
    if sb is None:
        if sa.factory.target != "model":
            raise UsageError(f"--a {sa}: give --b, the reference to replay, e.g. "
                             "--b llamacpp:MODEL")
        sb = RuntimeSpec("llamacpp", sa.target)
    return sa, sb


def tokenizer_side(infos: Sequence[ModelInfo]) -> ModelInfo | None:
    """The side whose tokenizer turns text into ids: a GGUF's (the engine's tokenizer agrees
    with llama.cpp's) before an HF directory's."""
    for info in infos:
        if info.engine_cfg is not None or (info.path and info.path.is_file()):
            if info.tokenizer is not None:
                return info
    for info in infos:
        if info.token_ids is None and info.tokenizer is not None:
            return info
    return None


def side_token_ids(infos: Sequence[ModelInfo], prompt: str | None = None,
                   prompt_file: Path | None = None, n_tokens: int | None = None,
                   chat: bool = False, seed: int = 0, loaded=None) -> list[int]:
    """Token ids for a run. A dump's recorded ids win (and exclude --prompt/--tokens)."""
    from .prompts import prompt_ids

    dumps = [i for i in infos if i.token_ids is not None]
    if dumps:
        if any(x is not None for x in (prompt, prompt_file, n_tokens)):
            raise UsageError(f"{dumps[0].spec} is a dump: the token ids are the recorded ones "
                             "(drop --prompt / --prompt-file / --tokens)")
        return list(dumps[0].token_ids)
    if loaded is not None:
        return prompt_ids(loaded, prompt, prompt_file, n_tokens, chat, seed)
    side = tokenizer_side(infos)
    if side is not None:
        return prompt_ids(side, prompt, prompt_file, n_tokens, chat, seed)
    if prompt is not None or prompt_file is not None:
        raise UsageError(f"no tokenizer for {', '.join(str(i.spec) for i in infos)}: give "
                         "--tokens N (seeded random ids)")
    n_vocab = next((i.n_vocab for i in infos if i.n_vocab), None)
    if not n_vocab:
        raise UsageError("cannot tell the vocabulary size to draw token ids from")
    n = n_tokens or 512
    return np.random.default_rng(seed).integers(0, n_vocab, n).tolist()
