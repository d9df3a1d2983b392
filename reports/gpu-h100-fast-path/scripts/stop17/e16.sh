source benchmarks/device_env.sh
python -m impdiff.testing.shapes llama3-8b Q4_K_M /tmp/l8q4.gguf > /dev/null
for i in 1 2; do for cfg in "0 0" "1 0" "0 1" "1 1"; do set -- $cfg
  IMPDIFF_PDL_EARLY=$1 IMPDIFF_PDL_EARLY_ATTN=$2 impdiff bench -m /tmp/l8q4.gguf --device cuda --runtimes engine -p 0 -n 128 -r 3 --bandwidth 3350 2>&1 | grep -E "tg128|rror" | sed "s/^/gemv-early=$1 attn-early=$2 /" | tee -a $OUT/e16_bench.txt
done; done
