"""Where a fast-path decode step spends its GPU time, kernel by kernel (torch.profiler).

    python benchmarks/profile_decode.py MODEL.gguf [--steps 8] [--graph]

Eager (default): the step's kernels one by one, as the torch profiler totals them (launch gaps
do not count). --graph: the greedy-decode CUDA graph replayed as `impdiff bench` runs it. Under
programmatic dependent launch a kernel starts before the one it waits on has ended, so its
duration includes that wait; each kernel is charged instead the time its end adds past the end
of the kernel before (its share of the step's critical path), kernels told apart by name and
grid. The profiler itself moves these figures: two changes that shortened the profiled step by
32 and 46 us left the unprofiled replay unchanged (reports/gpu-h100-fast-path, stop 18), so
time a change with `impdiff bench`, not with this.
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile

import torch
from torch.profiler import ProfilerActivity, profile

from impdiff.engine.fast import FastSession, load_fast_model


def eager_table(session: FastSession, steps: int) -> str:
    session.reset()
    session.eval([1, 2, 3], last_only=True)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for i in range(steps):  # eager steps: every kernel shows, launch gaps do not count
            session.model.forward(torch.tensor([5], device="cuda"),
                                  torch.tensor([3 + i], device="cuda", dtype=torch.int32))
        torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=14)


def critical_path(session: FastSession, steps: int) -> str:
    graph = session._step_buffers.graph  # captured by the greedy decode before this
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(100):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            graph.replay()
        torch.cuda.synchronize()
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        prof.export_chrome_trace(f.name)
        events = json.load(open(f.name))["traceEvents"]
    kernels = sorted((e for e in events if e.get("cat") == "kernel"), key=lambda e: e["ts"])
    per = len(kernels) // steps
    charged = collections.defaultdict(lambda: [0, 0.0, 0.0])  # count, on the path, duration
    span = 0.0
    for s in range(steps):
        step = kernels[s * per:(s + 1) * per]
        last_end = step[0]["ts"]
        span += max(e["ts"] + e["dur"] for e in step) - step[0]["ts"]
        for e in step:
            c = charged[f'{e["name"].split("(")[0][:40]} grid={e["args"].get("grid")}']
            c[0] += 1
            c[1] += max(0.0, e["ts"] + e["dur"] - last_end)
            c[2] += e["dur"]
            last_end = max(last_end, e["ts"] + e["dur"])
    lines = [f"replay {start.elapsed_time(end) * 10:.1f} us a step unprofiled; profiled: {per} "
             f"kernels, {span / steps:.1f} us first start to last end",
             "  on the path      each   duration  kernel"]
    for name, (n, path, dur) in sorted(charged.items(), key=lambda kv: -kv[1][1]):
        lines.append(f"{path / steps:9.1f} us {n / steps:4.0f}x {path / n:6.2f} us "
                     f"{dur / n:7.2f} us  {name}")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--graph", action="store_true",
                    help="the graphed step's critical path instead of the eager kernels")
    args = ap.parse_args()
    session = FastSession(load_fast_model(args.model, "cuda", max_ctx=512))
    session.generate_greedy([1, 2, 3], 4)
    print(critical_path(session, args.steps) if args.graph else eager_table(session, args.steps))


if __name__ == "__main__":
    with torch.inference_mode():
        main()
