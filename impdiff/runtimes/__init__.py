"""Runtimes: engines whose logits and intermediate activations impdiff compares.

Every runtime follows `impdiff.runtimes.base.Runtime`: open it (a context manager), feed token
ids chunk by chunk with `eval`, and get back the logits of every position plus the canonical
taps of `impdiff.taps` that it was asked for.

`registry` maps runtime names to factories (`engine`, `llamacpp`, `transformers`, `dump`, and
plug-ins from the `impdiff.runtimes` entry-point group) and parses `RUNTIME:MODEL` specs.
"""
