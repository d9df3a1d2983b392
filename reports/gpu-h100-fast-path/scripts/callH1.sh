source benchmarks/device_env.sh
nvidia-smi --query-gpu=name --format=csv,noheader
for i in $(seq 80); do [ -f /tmp/lcp_done ] && break; sleep 5; done; ls /tmp/lcp_done
echo "== kernel tests"; python -m pytest -q tests/test_kernels.py 2>&1 | tail -1
unset IMPDIFF_GEMV_TABLE  # the shipped table for this GPU
for i in $(seq 60); do [ -f /tmp/lcp_done ] && break; sleep 5; done; ls /tmp/lcp_done
cat /tmp/gemma.part0 /tmp/gemma.part1 /tmp/gemma.part2 /tmp/gemma.part3 /tmp/gemma.part4 /tmp/gemma.part5 > /tmp/gemma3.gguf; sha256sum /tmp/gemma3.gguf | cut -c1-16
[ -f /tmp/l8q4.gguf ] || python -m impdiff.testing.shapes llama3-8b Q4_K_M /tmp/l8q4.gguf 2>&1 | tail -1
echo "== llama3-8b Q4_K_M"; impdiff bench -m /tmp/l8q4.gguf --device cuda --gpu-layers 99 -p 512 -n 128 -r 3 --bandwidth 3350 2>&1 | grep -v Warn
echo "== gemma3-270m"; impdiff bench -m /tmp/gemma3.gguf --device cuda --gpu-layers 99 -p 512 -n 128 -r 3 --bandwidth 3350 2>&1 | grep -v Warn
echo "== greedy"; python benchmarks/fast_vs_reference.py check /tmp/gemma3.gguf .carry/gemma-greedy.json 2>&1 | tail -7
