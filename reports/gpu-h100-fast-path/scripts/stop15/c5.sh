source benchmarks/device_env.sh
echo "== gemma3-270m"; impdiff bench -m /tmp/gemma3.gguf --device cuda --gpu-layers 99 -p 512 -n 128 -r 3 --bandwidth 3350 2>&1 | grep -v Warn
echo "== taps"; python benchmarks/tap_overhead.py --fast --model /tmp/gemma3.gguf --tokens 2048 -r 3 --device cuda 2>&1 | tail -4
echo "== residual_norm warps"; python .carry/tools/normexp.py 2>&1 | tail -12
