"""Engine vs llama.cpp agreement on the real models and the synthetic architectures.

1. Greedy generation of 64 tokens from 5 prompts, token for token; where the runtimes part,
   the first differing position and each runtime's logit gap between the two candidates there.
2. Logits over a 512-token prompt: top-1 agreement and mean KL(llama.cpp || engine).

    python benchmarks/agreement.py [--models gemma3-270m,smollm2-135m] [--synthetic]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from impdiff.bracket import greedy
from impdiff.compare.metrics import logit_metrics
from impdiff.engine.chat import encode_prompt
from impdiff.engine.loader import load_gguf_model
from impdiff.prompts import filler_ids
from impdiff.real_models import is_instruct, resolve_model
from impdiff.runtimes.engine import EngineRuntime
from impdiff.runtimes.llamacpp import LlamaCppRuntime
from impdiff.testing.synthetic import make_model

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Here is a short story about a lighthouse keeper who",
    "Q: What is 17 times 23?\nA:",
    "Les trois couleurs du drapeau français sont",
]


def last_logits(runtime, ids):
    runtime.reset()
    return runtime.eval(ids, last_only=True).logits[-1]


def generation_agreement(path, n_tokens=64):
    loaded = load_gguf_model(path, "cpu")
    tok = loaded.tokenizer
    chat = is_instruct(path)
    rows = []
    with LlamaCppRuntime(path, n_ctx=1024) as ref:
        eng = EngineRuntime(path, n_ctx=1024, loaded=loaded)
        for prompt in PROMPTS:
            ids = encode_prompt(tok, prompt, chat)
            a = greedy(eng, ids, n_tokens, ())
            b = greedy(ref, ids, n_tokens, ())
            first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
            row = {"prompt": prompt.splitlines()[0][:40], "agree": first is None,
                   "first_diff": first, "engine_gap": None, "llamacpp_gap": None}
            if first is not None:
                prefix = ids + a[:first]
                la, lb = last_logits(eng, prefix), last_logits(ref, prefix)
                # how far each runtime preferred its own token over the other's
                row["engine_gap"] = float(la[a[first]] - la[b[first]])
                row["llamacpp_gap"] = float(lb[b[first]] - lb[a[first]])
            rows.append(row)
    return rows


def logit_agreement(path, n_tokens=512):
    loaded = load_gguf_model(path, "cpu")
    if loaded.tokenizer.model == "none":
        ids = np.random.default_rng(0).integers(0, loaded.cfg.n_vocab, n_tokens).tolist()
    else:
        ids = filler_ids(loaded.tokenizer, n_tokens)
    with LlamaCppRuntime(path, n_ctx=n_tokens + 16) as ref:
        b = ref.eval(ids).logits
    a = EngineRuntime(path, n_ctx=n_tokens + 16, loaded=loaded).eval(ids).logits
    m = logit_metrics(a, b)
    return {"top1": float(m["top1"].mean()), "kl_mean": float(m["kl"].mean()),
            "kl_max": float(m["kl"].max())}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="gemma3-270m,smollm2-135m")
    ap.add_argument("--synthetic", action="store_true", help="also the synthetic archs")
    ap.add_argument("--skip-generation", action="store_true")
    args = ap.parse_args()
    for name in [m for m in args.models.split(",") if m]:
        path = resolve_model(name)
        if not args.skip_generation:
            t0 = time.time()
            rows = generation_agreement(path)
            print(f"\n### {name}: greedy 64 tokens, engine vs llama.cpp ({time.time() - t0:.0f} s)")
            print("| prompt | agree | first differing position | engine gap | llama.cpp gap |")
            print("|---|---|---|---|---|")
            for r in rows:
                gaps = ("", "") if r["agree"] else (f"{r['engine_gap']:.3f}",
                                                    f"{r['llamacpp_gap']:.3f}")
                print(f"| {r['prompt']!r} | {'yes' if r['agree'] else 'no'} | "
                      f"{'' if r['agree'] else r['first_diff']} | {gaps[0]} | {gaps[1]} |")
        m = logit_agreement(path)
        print(f"\n{name}: 512-token prompt: top-1 {m['top1']:.1%}, KL mean {m['kl_mean']:.2e}, "
              f"max {m['kl_max']:.2e}")
    if args.synthetic:
        print("\n| synthetic model | top-1 | KL mean | KL max |\n|---|---|---|---|")
        with tempfile.TemporaryDirectory() as d:
            for arch in ("llama", "qwen3", "gemma3"):
                for qtype in ("F32", "Q8_0", "Q4_K_M"):
                    m = logit_agreement(make_model(arch, d, qtype))
                    print(f"| {arch} {qtype} | {m['top1']:.1%} | {m['kl_mean']:.2e} | "
                          f"{m['kl_max']:.2e} |")


if __name__ == "__main__":
    main()
