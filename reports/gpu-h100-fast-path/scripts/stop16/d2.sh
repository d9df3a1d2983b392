source benchmarks/device_env.sh
nvidia-smi --query-gpu=name --format=csv,noheader
t0=$(date +%s)
[ -f /tmp/l8q4.gguf ] || python -m impdiff.testing.shapes llama3-8b Q4_K_M /tmp/l8q4.gguf 2>&1 | tail -1
python -m pytest -q -x tests/test_kernels.py -k "integer or quantized or gated_gemv" 2>&1 | tail -2
b() { impdiff bench -m /tmp/l8q4.gguf --device cuda --runtimes engine -p 512 -n 128 -r 3 --bandwidth 3350 "$@" 2>&1 | grep "pp512\|tg128"; }
echo "== int default"; b
echo "== exact"; b --exact
echo "bench $(( $(date +%s) - t0 )) s"
timeout 330 python benchmarks/gemv_sweep.py --mix Q4_K_M --kernel int --write-table $OUT/int_table.json 2>&1 | grep -v "^  "
python - <<'PY'
import json, glob, os
t = json.load(open(glob.glob("kernels/tuning/*.json")[0])); t.update(json.load(open(os.environ["OUT"] + "/int_table.json")))
json.dump(t, open("/tmp/merged.json", "w"))
PY
echo "== int tuned"; IMPDIFF_GEMV_TABLE=/tmp/merged.json b
IMPDIFF_GEMV_TABLE=/tmp/merged.json python benchmarks/profile_decode.py /tmp/l8q4.gguf 2>&1 | grep -A8 "Name"
echo "done $(( $(date +%s) - t0 )) s"
