source benchmarks/device_env.sh
nvidia-smi --query-gpu=name --format=csv,noheader
t0=$(date +%s)
[ -f /tmp/l8q4.gguf ] || python -m impdiff.testing.shapes llama3-8b Q4_K_M /tmp/l8q4.gguf 2>&1 | tail -1
python -m pytest -q -x tests/test_kernels.py -k "integer or quantized or gated_gemv" 2>&1 | tail -1
b() { impdiff bench -m /tmp/l8q4.gguf --device cuda --runtimes engine -p 0 -n 128 -r 3 --bandwidth 3350 "$@" 2>&1 | grep "tg128"; }
for bits in 32 16 8; do echo "== act-bits $bits default configs"; b --act-bits $bits; done
timeout 300 python benchmarks/gemv_sweep.py --mix Q4_K_M --act-bits 8 --write-table $OUT/int8_table.json 2>&1 | grep -v "^  "
python - <<'PY'
import json, glob, os
t = json.load(open(glob.glob("kernels/tuning/*.json")[0]))
t.update(json.load(open(".carry/dev16/int16_table.json"))); t.update(json.load(open(os.environ["OUT"] + "/int8_table.json")))
json.dump(t, open("/tmp/merged.json", "w"))
PY
for bits in 16 8; do echo "== act-bits $bits tuned"; IMPDIFF_GEMV_TABLE=/tmp/merged.json b --act-bits $bits; done
echo "== act-bits 32 again"; b --act-bits 32
IMPDIFF_GEMV_TABLE=/tmp/merged.json python - <<'PY' 2>&1 | tail -12
import torch
from torch.profiler import ProfilerActivity, profile
from impdiff.engine.fast import FastSession, load_fast_model
with torch.inference_mode():
    s = FastSession(load_fast_model("/tmp/l8q4.gguf", "cuda", max_ctx=512, act_bits=8))
    s.generate_greedy([1, 2, 3], 4); s.reset(); s.eval([1, 2, 3], last_only=True); torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for i in range(8):
            s.model.forward(torch.tensor([5], device="cuda"), torch.tensor([3 + i], device="cuda", dtype=torch.int32))
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=8))
PY
echo "done $(( $(date +%s) - t0 )) s"
