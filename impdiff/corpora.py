"""Built-in filler text of any length, deterministic from a seed.

Generated rather than shipped: a haystack must reach any token count, and varied, plausible
sentences keep a small model in its ordinary regime (no degenerate repetition loops).
"""

from __future__ import annotations

import random

_WORDS = {
    "town": ["Aldermoor", "Brackenfield", "Caswell", "Dunmere", "Eastholm", "Fernley",
             "Glenross", "Harrowgate", "Ivybridge", "Kestrel Bay", "Larkspur", "Millbrook"],
    "thing": ["bridge", "library", "market", "harbour", "mill", "school", "orchard", "museum",
              "railway station", "lighthouse", "bakery", "observatory"],
    "person": ["the mayor", "a local historian", "the schoolteacher", "a retired sailor",
               "the baker", "an engineer", "the librarian", "a visiting painter"],
    "verb": ["restored", "built", "described", "painted", "measured", "visited", "repaired",
             "photographed", "catalogued", "admired"],
    "adj": ["old", "narrow", "busy", "quiet", "famous", "crowded", "modest", "newly painted",
            "windswept", "sunlit"],
    "season": ["spring", "summer", "autumn", "winter"],
    "topic": ["river levels", "wool prices", "the harvest", "migrating birds", "the tides",
              "railway timetables", "the weather", "local elections"],
}

_TEMPLATES = {
    "towns": [
        "In {season}, {person} of {town} {verb} the {adj} {thing}.",
        "The {thing} in {town} is {adj}, and {person} says it was {verb} long ago.",
        "Visitors to {town} often ask about the {adj} {thing} near the square.",
        "Every {season} the people of {town} talk about {topic}.",
        "{person} kept careful notes on {topic} for many years.",
    ],
    "reports": [
        "Report {n}: observations of {topic} near {town} were unremarkable this {season}.",
        "Entry {n}: the {thing} was {verb} by {person}; no further action is required.",
        "Item {n}: the committee reviewed {topic} and adjourned without a vote.",
        "Note {n}: conditions at the {adj} {thing} in {town} remain stable.",
    ],
}

CORPORA = tuple(_TEMPLATES)


def filler_sentences(corpus: str = "towns", seed: int = 0):
    """An endless stream of sentences from a built-in corpus."""
    if corpus not in _TEMPLATES:
        raise ValueError(f"unknown corpus '{corpus}' (built in: {', '.join(CORPORA)})")
    rng = random.Random(seed)
    n = 0
    while True:
        n += 1
        template = rng.choice(_TEMPLATES[corpus])
        yield template.format(n=n, **{k: rng.choice(v) for k, v in _WORDS.items()})


def filler_text(n_sentences: int, corpus: str = "towns", seed: int = 0) -> str:
    gen = filler_sentences(corpus, seed)
    return " ".join(next(gen) for _ in range(n_sentences))
