# Stop 18 f8: each kernel's share of the 8B step's critical path, shipped table vs the swept one (QKV on the tensor-core GEMV), and without PDL
source benchmarks/device_env.sh
[ -f /tmp/l8q4.gguf ] || python -m impdiff.testing.shapes llama3-8b Q4_K_M /tmp/l8q4.gguf > /dev/null
echo "== shipped table" | tee -a $OUT/f8_chain.txt
python .carry/dev18/chain_profile.py /tmp/l8q4.gguf 2>&1 | grep -v -i warn | tee -a $OUT/f8_chain.txt
echo "== swept table (QKV on mma, k_warps 4)" | tee -a $OUT/f8_chain.txt
IMPDIFF_MMA_TABLE=/tmp/f7_mma_table.json python .carry/dev18/chain_profile.py /tmp/l8q4.gguf 2>&1 | grep -v -i warn | tee -a $OUT/f8_chain.txt
echo "== shipped table, PDL off" | tee -a $OUT/f8_chain.txt
IMPDIFF_PDL=0 python .carry/dev18/chain_profile.py /tmp/l8q4.gguf 2>&1 | grep -v -i warn | tee -a $OUT/f8_chain.txt
