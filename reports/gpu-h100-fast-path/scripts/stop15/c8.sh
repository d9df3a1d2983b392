source benchmarks/device_env.sh
for i in $(seq 100); do [ -f /tmp/lcp_done ] && break; sleep 5; done; ls /tmp/lcp_done
echo "== kernel tests"; python -m pytest -q tests/test_kernels.py 2>&1 | tail -1
[ -f /tmp/l8q4.gguf ] || python -m impdiff.testing.shapes llama3-8b Q4_K_M /tmp/l8q4.gguf 2>&1 | tail -1
echo "== llama3-8b Q4_K_M"; impdiff bench -m /tmp/l8q4.gguf --device cuda --gpu-layers 99 -p 512 -n 128 -r 3 --bandwidth 3350 2>&1 | grep -v Warn
echo "== gemma3-270m"; impdiff bench -m /tmp/gemma3.gguf --device cuda --gpu-layers 99 -p 512 -n 128 -r 3 --bandwidth 3350 2>&1 | grep -v Warn
echo "== profile"; python benchmarks/profile_decode.py /tmp/l8q4.gguf 2>&1 | grep -E "Name|kernel|Self CUDA time" | cut -c1-60,150-260 | head -12
echo "== taps"; python benchmarks/tap_overhead.py --fast --model /tmp/gemma3.gguf --tokens 2048 -r 3 --device cuda 2>&1 | tail -4
