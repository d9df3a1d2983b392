source benchmarks/device_env.sh
python -m impdiff.testing.shapes llama3-8b Q4_K_M /tmp/l8q4.gguf > /dev/null &
python -m pytest -q -p no:cacheprovider tests/test_mma_gemv.py tests/test_kernels.py -k "not compiles_for_sm90" 2>&1 | tail -4 | tee $OUT/e7_tests.txt
wait
for mode in triton mma triton mma; do
  IMPDIFF_GEMV=$mode impdiff bench -m /tmp/l8q4.gguf --device cuda --runtimes engine -p 0 -n 128 -r 3 --bandwidth 3350 2>&1 | grep -E "tg128" | sed "s/^/$mode /" | tee -a $OUT/e7_bench.txt
done
for mode in triton mma; do
  echo "== $mode" >> $OUT/e7_profile.txt
  IMPDIFF_GEMV=$mode python benchmarks/profile_decode.py /tmp/l8q4.gguf >> $OUT/e7_profile.txt 2>&1
done
grep -E "==|gemv|Self CUDA time total" $OUT/e7_profile.txt | cut -c1-160 | head -30
