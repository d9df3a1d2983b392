source benchmarks/device_env.sh
for v in new old; do
  if [ $v = old ]; then mkdir -p /tmp/cur && cp engine/fast.py kernels/norm_rope.py kernels/quant_matmul.py /tmp/cur/ && cp .carry/tools/old/fast.py engine/ && cp .carry/tools/old/norm_rope.py .carry/tools/old/quant_matmul.py kernels/; fi
  if [ $v = new ] && [ -d /tmp/cur ]; then cp /tmp/cur/fast.py engine/ && cp /tmp/cur/norm_rope.py /tmp/cur/quant_matmul.py kernels/; fi
  echo "== $v"; python benchmarks/tap_overhead.py --fast --model /tmp/gemma3.gguf --tokens 2048 -r 7 --device cuda 2>&1 | tail -3
done
