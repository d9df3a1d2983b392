source benchmarks/device_env.sh
nvidia-smi --query-gpu=name --format=csv,noheader
t0=$(date +%s)
[ -f /tmp/l8q4.gguf ] || python -m impdiff.testing.shapes llama3-8b Q4_K_M /tmp/l8q4.gguf 2>&1 | tail -1
python -m pytest -q -x tests/test_kernels.py -k "gemv or nvfp4 or prefill or planes" 2>&1 | tail -1
python .carry/dev16/exp_rb.py 2>&1 | grep -v Warning
echo "== bench (row_blocks 1, shipped table)"; impdiff bench -m /tmp/l8q4.gguf --device cuda --runtimes engine -p 0 -n 128 -r 3 --bandwidth 3350 2>&1 | grep tg128
echo "done $(( $(date +%s) - t0 )) s"
