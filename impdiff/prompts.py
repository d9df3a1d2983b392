"""Token ids for a run: from a prompt, a prompt file, or N tokens of built-in filler text.

The debugger tokenises once, with the engine's tokenizer, and feeds both runtimes those ids.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .corpora import filler_sentences
from .errors import UsageError


def filler_ids(tokenizer, n_tokens: int, corpus: str = "towns", seed: int = 0) -> list[int]:
    """Exactly n_tokens ids of filler text (BOS first where the model wants one)."""
    ids = tokenizer.encode("", add_special=True)
    for sentence in filler_sentences(corpus, seed):
        ids += tokenizer.encode(" " + sentence, add_special=False)
        if len(ids) >= n_tokens:
            return ids[:n_tokens]
    raise AssertionError("unreachable: filler is endless")


def prompt_ids(loaded, prompt: str | None = None, prompt_file: Path | None = None,
               n_tokens: int | None = None, chat: bool = False, seed: int = 0) -> list[int]:
    from .engine.chat import encode_prompt

    given = [x is not None for x in (prompt, prompt_file, n_tokens)]
    if sum(given) > 1:
        raise UsageError("give one of --prompt, --prompt-file, --tokens")
    if prompt_file is not None:
        try:
            prompt = Path(prompt_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--prompt-file {prompt_file}: cannot read ({exc})") from None
    if prompt is not None:
        return encode_prompt(loaded.tokenizer, prompt, chat)
    n = n_tokens or 512
    if n < 1 or n > loaded.cfg.n_ctx_train:
        raise UsageError(f"--tokens {n}: expected 1..{loaded.cfg.n_ctx_train} (the model's "
                         "training context)")
    if loaded.tokenizer.model == "none":
        # synthetic models carry no vocabulary: seeded ids stand in for text
        return np.random.default_rng(seed).integers(0, loaded.cfg.n_vocab, n).tolist()
    return filler_ids(loaded.tokenizer, n, seed=seed)
