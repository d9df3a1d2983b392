source benchmarks/device_env.sh
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
which nvcc; nvcc --version | tail -1
python -m impdiff.testing.shapes llama3-8b Q4_K_M /tmp/l8q4.gguf > /dev/null &
python .carry/dev17/e1.py 2>&1 | tee $OUT/e1.txt
wait
for mode in triton mma; do
  IMPDIFF_GEMV=$mode impdiff bench -m /tmp/l8q4.gguf --device cuda --runtimes engine -p 0 -n 128 -r 3 --bandwidth 3350 2>&1 | tail -4 | tee -a $OUT/e1.txt
done
