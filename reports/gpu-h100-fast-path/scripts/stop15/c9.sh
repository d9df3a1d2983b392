source benchmarks/device_env.sh
echo "== greedy smollm2"; python benchmarks/fast_vs_reference.py check /tmp/smollm2.gguf .carry/smollm2-greedy.json 2>&1 | tail -7
echo "== greedy gemma3"; python benchmarks/fast_vs_reference.py check /tmp/gemma3.gguf .carry/gemma-greedy.json 2>&1 | tail -7
echo "== smollm2 engine tg128"; impdiff bench -m /tmp/smollm2.gguf --device cuda --runtimes engine -p 0 -n 128 -r 5 2>&1 | grep -E "tg" | tail -1
