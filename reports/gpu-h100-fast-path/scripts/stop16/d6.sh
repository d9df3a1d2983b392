source benchmarks/device_env.sh
nvidia-smi --query-gpu=name --format=csv,noheader
t0=$(date +%s)
[ -f /tmp/l8q4.gguf ] || python -m impdiff.testing.shapes llama3-8b Q4_K_M /tmp/l8q4.gguf 2>&1 | tail -1
python -m pytest -q -x tests/test_kernels.py -k "integer or quantized or gated_gemv" 2>&1 | tail -1
b() { impdiff bench -m /tmp/l8q4.gguf --device cuda --runtimes engine -p 0 -n 128 -r 3 --bandwidth 3350 "$@" 2>&1 | grep "tg128"; }
for bits in 8 16; do timeout 200 python benchmarks/gemv_sweep.py --mix Q4_K_M --act-bits $bits --write-table $OUT/int${bits}_table.json 2>&1 | grep -v "^  "; done
python - <<'PY'
import json, glob, os
t = json.load(open(glob.glob("kernels/tuning/*.json")[0]))
for b in (8, 16): t.update(json.load(open(os.environ["OUT"] + f"/int{b}_table.json")))
json.dump(t, open("/tmp/merged.json", "w"))
PY
for bits in 32 16 8; do echo "== act-bits $bits tuned"; IMPDIFF_GEMV_TABLE=/tmp/merged.json b --act-bits $bits; done
echo "done $(( $(date +%s) - t0 )) s"
