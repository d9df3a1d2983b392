"""Stop 18: each kernel's share of a graphed decode step's critical path. Under PDL a kernel's
duration includes its wait on the one before, so each kernel is charged the time its end adds
past the previous kernel's end; kernels are told apart by name and grid."""
import collections, json, sys, tempfile
import torch
from torch.profiler import ProfilerActivity, profile
from impdiff.engine.fast import FastSession, load_fast_model

REPS = 5
with torch.inference_mode():
    s = FastSession(load_fast_model(sys.argv[1], "cuda", max_ctx=512))
    s.generate_greedy([1, 2, 3, 4], 8)
    g = s._step_buffers.graph
    for _ in range(20):
        g.replay()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(REPS):
            g.replay()
        torch.cuda.synchronize()
path = tempfile.mktemp(suffix=".json")
prof.export_chrome_trace(path)
ks = sorted((e for e in json.load(open(path))["traceEvents"] if e.get("cat") == "kernel"),
            key=lambda e: e["ts"])
per = len(ks) // REPS
by = collections.defaultdict(lambda: [0, 0.0, 0.0])
span = 0.0
for r in range(REPS):
    step = ks[r * per:(r + 1) * per]
    last_end = step[0]["ts"]
    span += step[-1]["ts"] + step[-1]["dur"] - step[0]["ts"]
    for e in step:
        end = e["ts"] + e["dur"]
        key = f'{e["name"].split("(")[0][:28]} grid={e["args"].get("grid")}'
        by[key][0] += 1
        by[key][1] += max(0.0, end - last_end)
        by[key][2] += e["dur"]
        last_end = max(last_end, end)
print(f"{per} kernels a step, span {span / REPS:.1f} us")
for key, (n, inc, dur) in sorted(by.items(), key=lambda kv: -kv[1][1]):
    print(f"{inc / REPS:8.1f} us on the path {n / REPS:5.0f}x {inc / n:6.2f} us each "
          f"(duration {dur / n:6.2f})  {key}")
