source benchmarks/device_env.sh
nvidia-smi --query-gpu=name --format=csv,noheader
setsid nohup bash benchmarks/device_build_llamacpp.sh $PWD/.carry/lcp.tar.xz > /tmp/lcp_build.log 2>&1 &
t0=$(date +%s)
python -m impdiff.testing.shapes llama3-8b Q4_K_M /tmp/l8q4.gguf 2>&1 | tail -1
echo "gen $(( $(date +%s) - t0 )) s"
python -m pytest -q -x tests/test_kernels.py -k "not fast_model and not taps and not graph and not tap_stats and not compiles" 2>&1 | tail -3
echo "tests $(( $(date +%s) - t0 )) s"
b() { impdiff bench -m /tmp/l8q4.gguf --device cuda --runtimes engine -p 512 -n 128 -r 3 --bandwidth 3350 "$@" 2>&1 | tail -5; }
echo "== int"; b
echo "== exact"; b --exact
echo "bench $(( $(date +%s) - t0 )) s"
python benchmarks/profile_decode.py /tmp/l8q4.gguf 2>&1 | tail -18
echo "done $(( $(date +%s) - t0 )) s"
