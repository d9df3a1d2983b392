"""Where a fast-path decode step spends its GPU time, kernel by kernel (torch.profiler).

    python benchmarks/profile_decode.py MODEL.gguf [--steps 8]
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from impdiff.engine.fast import FastSession, load_fast_model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    session = FastSession(load_fast_model(args.model, "cuda", max_ctx=512))
    session.generate_greedy([1, 2, 3], 4)
    session.reset()
    session.eval([1, 2, 3], last_only=True)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for i in range(args.steps):  # eager steps: every kernel shows, launch gaps do not count
            session.model.forward(torch.tensor([5], device="cuda"),
                                  torch.tensor([3 + i], device="cuda", dtype=torch.int32))
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14))


if __name__ == "__main__":
    with torch.inference_mode():
        main()
