source benchmarks/device_env.sh
nvidia-smi --query-gpu=name --format=csv,noheader
cat /tmp/gemma.part0 /tmp/gemma.part1 /tmp/gemma.part2 /tmp/gemma.part3 /tmp/gemma.part4 /tmp/gemma.part5 > /tmp/gemma3.gguf; sha256sum /tmp/gemma3.gguf | cut -c1-16
echo "== kernel tests"; python -m pytest -q tests/test_kernels.py -k "stats or tap or rope or compiles" 2>&1 | tail -1
mkdir -p /tmp/cur && cp impdiff/tap_stats.py kernels/stats.py /tmp/cur/
for v in new prev new prev; do
  if [ $v = prev ]; then cp .carry/tools/prev/tap_stats.py impdiff/; cp .carry/tools/prev/stats.py kernels/; else cp /tmp/cur/tap_stats.py impdiff/; cp /tmp/cur/stats.py kernels/; fi
  echo "== $v"; python benchmarks/tap_overhead.py --fast --model /tmp/gemma3.gguf --tokens 2048 -r 7 --device cuda 2>&1 | tail -4
done
cp /tmp/cur/tap_stats.py impdiff/; cp /tmp/cur/stats.py kernels/
