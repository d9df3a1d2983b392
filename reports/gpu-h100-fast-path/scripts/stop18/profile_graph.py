"""Stop 18: where a graphed decode step's time goes: replay time, kernels a step, their summed
durations and the idle time between them (torch.profiler over graph replays), by kernel."""
import collections, json, sys, tempfile
import torch
from torch.profiler import ProfilerActivity, profile
from impdiff.engine.fast import FastSession, load_fast_model

REPS = 5
with torch.inference_mode():
    s = FastSession(load_fast_model(sys.argv[1], "cuda", max_ctx=512))
    s.generate_greedy([1, 2, 3, 4], 8)
    g = s._step_buffers.graph
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(200):
        g.replay()
    b.record(); torch.cuda.synchronize()
    print(f"replay {a.elapsed_time(b) / 200 * 1000:.1f} us a step")
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(REPS):
            g.replay()
        torch.cuda.synchronize()
path = tempfile.mktemp(suffix=".json")
prof.export_chrome_trace(path)
ks = sorted((e for e in json.load(open(path))["traceEvents"] if e.get("cat") == "kernel"),
            key=lambda e: e["ts"])
per = len(ks) // REPS
busy = sum(e["dur"] for e in ks) / REPS
span = sum(ks[(r + 1) * per - 1]["ts"] + ks[(r + 1) * per - 1]["dur"] - ks[r * per]["ts"]
           for r in range(REPS)) / REPS
print(f"{per} kernels a step; summed durations {busy:.1f} us; first start to last end {span:.1f} us")
by = collections.defaultdict(lambda: [0, 0.0])
for e in ks:
    name = e["name"].split("(")[0][:60]
    by[name][0] += 1; by[name][1] += e["dur"]
for name, (n, t) in sorted(by.items(), key=lambda kv: -kv[1][1])[:14]:
    print(f"{t / REPS:9.1f} us {n / REPS:6.0f}x {t / n:7.2f} us  {name}")
