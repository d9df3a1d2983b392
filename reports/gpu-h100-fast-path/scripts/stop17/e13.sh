source benchmarks/device_env.sh
python -m impdiff.testing.shapes llama3-8b Q4_K_M /tmp/l8q4.gguf > /dev/null &
python -m pytest -q -p no:cacheprovider tests/test_mma_gemv.py tests/test_kernels.py -k "not compiles_for_sm90" --tb=line 2>&1 | tail -5 | tee $OUT/e13_tests.txt
python .carry/dev17/e12.py 2>&1 | tee $OUT/e13_ceiling.txt
wait
for mode in triton mma triton mma; do
  IMPDIFF_GEMV=$mode impdiff bench -m /tmp/l8q4.gguf --device cuda --runtimes engine -p 0 -n 128 -r 3 --bandwidth 3350 2>&1 | grep -E "tg128" | sed "s/^/$mode /" | tee -a $OUT/e13_bench.txt
done
for mode in triton mma; do
  echo "== $mode" >> $OUT/e13_profile.txt
  IMPDIFF_GEMV=$mode python benchmarks/profile_decode.py /tmp/l8q4.gguf >> $OUT/e13_profile.txt 2>&1
done
grep -E "==|gemv|Self CUDA" $OUT/e13_profile.txt | cut -c1-40,100-170
