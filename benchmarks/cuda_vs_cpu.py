"""The engine on CUDA against the engine on the CPU: same code path, same answers?

    python benchmarks/cuda_vs_cpu.py MODEL.gguf [MODEL.gguf ...]

For each model: logits over a 512-token prompt (max abs difference, top-1 agreement, KL), greedy
64 tokens from five prompts token for token, and the engine's pp512 / tg128 on each device.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from impdiff.bench import bench, weight_bytes
from impdiff.compare.metrics import logit_metrics
from impdiff.engine.loader import load_gguf_model
from impdiff.runtimes.engine import EngineRuntime

PROMPT_SEEDS = range(5)


def greedy_ids(runtime, ids, n):
    runtime.reset()
    out = []
    logits = runtime.eval(ids, last_only=True).logits[-1]
    for _ in range(n):
        out.append(int(logits.argmax()))
        logits = runtime.eval(out[-1:], last_only=True).logits[-1]
    return out


def main(paths):
    for path in paths:
        cpu = load_gguf_model(path, "cpu")
        gpu = load_gguf_model(path, "cuda")
        rt_cpu = EngineRuntime(path, n_ctx=1024, loaded=cpu)
        rt_gpu = EngineRuntime(path, n_ctx=1024, loaded=gpu)
        rng = np.random.default_rng(0)
        ids = rng.integers(10, cpu.cfg.n_vocab, 512).tolist()
        a, b = rt_gpu.eval(ids).logits, rt_cpu.eval(ids).logits
        m = logit_metrics(a, b)
        print(f"{path}: {torch.cuda.get_device_name()} vs CPU, 512-token logits: max |diff| "
              f"{np.abs(a - b).max():.2e}, top-1 {m['top1'].mean():.1%}, KL mean "
              f"{m['kl'].mean():.2e}")
        same = 0
        for seed in PROMPT_SEEDS:
            prompt = np.random.default_rng(seed).integers(10, cpu.cfg.n_vocab, 16).tolist()
            g, c = greedy_ids(rt_gpu, prompt, 64), greedy_ids(rt_cpu, prompt, 64)
            first = next((i for i, (x, y) in enumerate(zip(g, c)) if x != y), None)
            same += first is None
            print(f"  greedy 64 from prompt {seed}: " + ("identical" if first is None
                                                        else f"first difference at {first}"))
        print(f"  {same}/{len(PROMPT_SEEDS)} greedy continuations identical")
        rows = bench({"engine-cuda": rt_gpu}, 512, 128, 3, cpu.cfg.n_vocab, weight_bytes(gpu.gguf))
        for r in rows:
            print(f"  {r.runtime} {r.test}: {r.mean:.1f} ± {r.sd:.1f} t/s")


if __name__ == "__main__":
    main(sys.argv[1:])
