source benchmarks/device_env.sh
python -m impdiff.testing.shapes llama3-8b Q4_K_M /tmp/l8q4.gguf > /dev/null &
python -m pytest -q -p no:cacheprovider tests/test_mma_gemv.py tests/test_kernels.py -k "not compiles_for_sm90" --tb=short 2>&1 | tail -4 | tee $OUT/e14_tests.txt
wait
python .carry/dev17/e14.py /tmp/l8q4.gguf 2>&1 | tail -3 | tee $OUT/e14_greedy.txt
for cfg in "1 mma" "0 mma" "1 triton" "0 triton" "1 mma" "0 mma"; do set -- $cfg
  IMPDIFF_PDL=$1 IMPDIFF_GEMV=$2 impdiff bench -m /tmp/l8q4.gguf --device cuda --runtimes engine -p 0 -n 128 -r 3 --bandwidth 3350 2>&1 | grep -E "tg128|Error|error" | sed "s/^/pdl=$1 $2 /" | tee -a $OUT/e14_bench.txt
done
