source benchmarks/device_env.sh
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
python -m impdiff.testing.shapes llama3-8b Q4_K_M /tmp/l8q4.gguf > /dev/null &
python -m pytest -q -p no:cacheprovider tests/test_mma_gemv.py tests/test_kernels.py -k "not compiles_for_sm90" --tb=line 2>&1 | tail -5 | tee $OUT/e17_tests.txt
wait
python .carry/dev17/e14.py /tmp/l8q4.gguf 2>&1 | tail -3 | tee $OUT/e17_greedy.txt
for i in 1 2; do for cfg in "1 mma" "0 mma" "1 triton" "0 triton"; do set -- $cfg
  IMPDIFF_PDL=$1 IMPDIFF_GEMV=$2 impdiff bench -m /tmp/l8q4.gguf --device cuda --runtimes engine -p 0 -n 128 -r 3 --bandwidth 3350 2>&1 | grep -E "tg128|rror" | sed "s/^/pdl=$1 gemv=$2 /" | tee -a $OUT/e17_bench.txt
done; done
