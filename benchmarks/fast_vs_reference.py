"""The engine's fast path (kernels, CUDA graphs) against its float32 reference, on a real model.

    python benchmarks/fast_vs_reference.py record MODEL greedy.json   # CPU reference, here
    python benchmarks/fast_vs_reference.py check MODEL greedy.json    # fast path, on the GPU

`record` decodes greedily from five prompts on the CPU reference path and writes the prompt ids
and tokens; `check` decodes the same prompts on the fast path (CUDA graph, token picked on the
GPU) and compares token for token, then compares logits over a 512-token prompt with the
reference path on the same GPU (max |diff|, top-1 agreement, mean KL).
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch

from impdiff.compare.metrics import logit_metrics
from impdiff.engine.fast import FastSession, load_fast_model
from impdiff.engine.generate import Session, generate
from impdiff.engine.loader import load_gguf_model
from impdiff.real_models import resolve_model

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village",
           "The three primary colours are", "Water boils at a temperature of"]
N_TOKENS = 32


def record(model: str, out: str) -> None:
    loaded = load_gguf_model(resolve_model(model), "cpu")
    runs = []
    for text in PROMPTS:
        ids = loaded.tokenizer.encode(text, add_special=True)
        tokens = list(generate(Session(loaded.model, n_ctx=256), ids, N_TOKENS))
        runs.append({"prompt": text, "ids": ids, "greedy": tokens})
        print(text, "->", loaded.tokenizer.decode(tokens)[:60].replace("\n", " "), flush=True)
    with open(out, "w") as f:
        json.dump(runs, f)


def check(model: str, recorded: str) -> None:
    path = resolve_model(model)
    fast = load_fast_model(path, "cuda", max_ctx=1024)
    same = 0
    for run in json.load(open(recorded)):
        got = FastSession(fast).generate_greedy(run["ids"], len(run["greedy"]))
        first = next((i for i, (a, b) in enumerate(zip(got, run["greedy"])) if a != b), None)
        same += first is None
        print(f"{run['prompt']!r}: " + ("identical" if first is None
                                        else f"first difference at token {first}"))
    print(f"greedy {N_TOKENS} tokens: {same}/{len(PROMPTS)} identical to the CPU reference")
    reference = load_gguf_model(path, "cuda")
    ids = np.random.default_rng(0).integers(10, reference.cfg.n_vocab, 512).tolist()
    want = Session(reference.model, n_ctx=1024).eval(ids).float().cpu().numpy()
    got = FastSession(fast).eval(ids).float().cpu().numpy()
    m = logit_metrics(got, want)
    print(f"512-token logits, fast vs reference on the GPU: max |diff| "
          f"{np.abs(got - want).max():.3g}, top-1 {m['top1'].mean():.1%}, mean KL {m['kl'].mean():.2e}")


if __name__ == "__main__":
    with torch.inference_mode():
        {"record": record, "check": check}[sys.argv[1]](*sys.argv[2:])
