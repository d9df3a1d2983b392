# Stop 23 h2 (prepared, not run): after h1 on the same warm machine (/tmp/l8q4.gguf and
# /tmp/s22 kept): where the step's time goes with the deferred norm (expect 1 norm kernel in
# place of 65, and the i8 GEMVs around them a little longer), its GPU tests with no tuning
# table (Q6_K and the gated product on the i8 kernel, the rest on Triton: the norm deferred
# only where every reader is i8), and the NormAfter patch's own tests.
source benchmarks/device_env.sh
export IMPDIFF_SYNTHETIC_DIR=$PWD/.carry/synth
export IMPDIFF_MMA_TABLE=$PWD/kernels/tuning/NVIDIA_H100_80GB_HBM3.mma.json IMPDIFF_GEMV_TABLE=$PWD/kernels/tuning/NVIDIA_H100_80GB_HBM3.json
[ -f /tmp/l8q4.gguf ] || python -m impdiff.testing.shapes llama3-8b Q4_K_M /tmp/l8q4.gguf > /dev/null
IMPDIFF_DEFERRED_NORM=1 timeout 100 python benchmarks/profile_decode.py /tmp/l8q4.gguf --graph 2>&1 | grep -v Warn | head -18 | tee $OUT/h2_profile_on.txt
timeout 100 python benchmarks/profile_decode.py /tmp/l8q4.gguf --graph 2>&1 | grep -v Warn | head -18 | tee $OUT/h2_profile_off.txt
echo '{}' > /tmp/empty.json
IMPDIFF_DEFERRED_NORM=1 IMPDIFF_MMA_TABLE=/tmp/empty.json timeout 80 python -m pytest -q -p no:cacheprovider tests/test_kernels.py \
  -k "fast_model or greedy or dependent" --tb=short 2>&1 | tail -4 | sed "s/^/no table, deferred: /" | tee $OUT/h2_tests.txt
[ -d /tmp/s22 ] && (cd /tmp/s22 && source benchmarks/device_env.sh && IMPDIFF_MMA_TABLE=/tmp/s22/kernels/tuning/NVIDIA_H100_80GB_HBM3.mma.json timeout 90 python -m pytest -q -p no:cacheprovider tests/test_mma_gemv.py -k "norm_in_the_last_block" --tb=short) 2>&1 | tail -3 | sed "s/^/NormAfter: /" | tee -a $OUT/h2_tests.txt
