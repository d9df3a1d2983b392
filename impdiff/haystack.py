"""Sentinel-recall prompts: filler text with a sentinel at a chosen depth, then a question.

Lengths are counted in the model's own tokens: the filler is grown word by word until the whole
prompt (filler, sentinel, question) is as close to the target as the tokenizer allows.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from .corpora import filler_sentences
from .errors import UsageError

SENTINEL_FORMS = {
    # form: (sentence with {value}, question, answer lead-in, value generator)
    "code": ("The secret code is {value}.", "What is the secret code mentioned in the text?",
             "The secret code is", lambda rng: str(rng.randint(1000, 9999))),
    "passphrase": ("The passphrase for the vault is {value}.",
                   "What is the passphrase for the vault?", "The passphrase for the vault is",
                   lambda rng: rng.choice(["amber", "cobalt", "juniper", "saffron", "violet"])
                   + "-" + str(rng.randint(10, 99))),
    "city": ("The meeting will take place in {value}.", "Where will the meeting take place?",
             "The meeting will take place in",
             lambda rng: rng.choice(["Lisbon", "Oslo", "Nairobi", "Quito", "Hanoi", "Tbilisi"])),
}


@dataclass(frozen=True)
class Haystack:
    ids: list[int]
    text: str
    answer: str
    sentinel_token: int  # index of the sentinel's first token in ids
    target: int

    @property
    def n_tokens(self) -> int:
        return len(self.ids)


def recalled(generated: str, answer: str) -> bool:
    """The answer appears in the completion, ignoring case and surrounding punctuation."""
    norm = lambda s: re.sub(r"\s+", " ", s.lower()).strip()  # noqa: E731
    return norm(answer) in norm(generated)


def build_haystack(tokenizer, target: int, depth: float = 0.5, corpus: str = "towns",
                   form: str = "code", seed: int = 0, chat: bool = False) -> Haystack:
    """A prompt of about `target` tokens with the sentinel `depth` of the way into the filler."""
    from .engine.chat import encode_prompt

    if form not in SENTINEL_FORMS:
        raise UsageError(f"sentinel form '{form}' unknown (known: {', '.join(SENTINEL_FORMS)})")
    if not 0.0 <= depth <= 1.0:
        raise UsageError(f"--depth {depth}: expected a fraction from 0 to 1")
    sentence, question, lead, make_value = SENTINEL_FORMS[form]
    rng = random.Random(seed)
    value = make_value(rng)
    sentinel = sentence.format(value=value)
    words: list[str] = []
    gen = filler_sentences(corpus, seed)

    def render(n_words: int) -> tuple[str, str, str]:
        while len(words) < n_words:
            words.extend(next(gen).split())
        filler = words[:n_words]
        cut = round(len(filler) * depth)
        # the sentinel goes at a sentence boundary at or before the cut
        while cut > 0 and not filler[cut - 1].endswith("."):
            cut -= 1
        before, after = " ".join(filler[:cut]), " ".join(filler[cut:])
        doc = " ".join(x for x in (before, sentinel, after) if x)
        return doc, before, after

    def encode(n_words: int) -> tuple[list[int], str, str]:
        doc, before, _ = render(n_words)
        if chat:
            text = f"{doc}\n\n{question} Answer with the value only."
            return encode_prompt(tokenizer, text, chat=True), text, before
        text = f"{doc}\n\nQuestion: {question}\nAnswer: {lead}"
        return encode_prompt(tokenizer, text, chat=False), text, before

    lo, hi = 0, max(8, target)  # words; a word is at least one token
    if len(encode(0)[0]) > target:
        raise UsageError(f"length {target}: the question alone is longer; use a larger length")
    while lo < hi:  # largest word count whose prompt fits the target
        mid = (lo + hi + 1) // 2
        if len(encode(mid)[0]) <= target:
            lo = mid
        else:
            hi = mid - 1
    ids, text, before = encode(lo)
    prefix = encode_prompt(tokenizer, before, chat=False) if before else []
    return Haystack(ids, text, value, max(len(prefix), 0), target)
