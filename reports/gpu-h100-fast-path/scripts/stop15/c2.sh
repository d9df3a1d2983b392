source benchmarks/device_env.sh
echo "== greedy smollm2"; python benchmarks/fast_vs_reference.py check /tmp/smollm2.gguf .carry/smollm2-greedy.json 2>&1 | tail -7
echo "== greedy gemma3"; python benchmarks/fast_vs_reference.py check /tmp/gemma3.gguf .carry/gemma-greedy.json 2>&1 | tail -7
for m in smollm2 gemma3; do
echo "== $m engine tg128, this commit"; impdiff bench -m /tmp/$m.gguf --device cuda --runtimes engine -p 0 -n 128 -r 5 2>&1 | grep -E "tg|engine" | tail -2
echo "== $m engine tg128, baseline 5907bdf"; (cd /tmp/base && PYTHONPATH=/tmp/cuda_site:/tmp/base:/tmp/site python3 -c 'import sys; from impdiff.cli import main; sys.argv[0] = "impdiff"; main()' bench -m /tmp/$m.gguf --device cuda --runtimes engine -p 0 -n 128 -r 5 2>&1 | grep -E "tg|engine" | tail -2)
done
ls /tmp/lcp_done
