source benchmarks/device_env.sh
python .carry/dev17/e1.py --no-sweep 2>&1 | grep -E "x\*|gated|compile" | tee $OUT/e6_check.txt | tail -5
python -m impdiff.testing.shapes llama3-8b Q4_K_M /tmp/l8q4.gguf > /dev/null &
python benchmarks/gemv_sweep.py --kernel mma --write-table $OUT/NVIDIA_H100_80GB_HBM3.mma.json 2>&1 | tee $OUT/e6_sweep.txt
wait
cat $OUT/NVIDIA_H100_80GB_HBM3.mma.json
for mode in triton mma; do
  IMPDIFF_GEMV=$mode IMPDIFF_MMA_TABLE=$OUT/NVIDIA_H100_80GB_HBM3.mma.json impdiff bench -m /tmp/l8q4.gguf --device cuda --runtimes engine -p 0 -n 128 -r 3 --bandwidth 3350 2>&1 | grep -E "tg128" | sed "s/^/$mode /" | tee -a $OUT/e6_bench.txt
done
IMPDIFF_GEMV=triton impdiff bench -m /tmp/l8q4.gguf --device cuda --runtimes engine -p 0 -n 128 -r 3 --bandwidth 3350 2>&1 | grep -E "tg128" | sed "s/^/triton-again /" | tee -a $OUT/e6_bench.txt
