source benchmarks/device_env.sh
nvidia-smi --query-gpu=name --format=csv,noheader
python -m impdiff.testing.shapes llama3-8b Q4_K_M /tmp/l8q4.gguf 2>&1 | tail -1
b() { impdiff bench -m /tmp/l8q4.gguf --device cuda --runtimes engine -p 0 -n 128 -r 5 --bandwidth 3350 2>&1 | grep tg; }
cp kernels/quant_matmul.py /tmp/qm_base.py
echo "== shipped"; b
for v in cg ef; do cp .carry/tools/qm_$v.py kernels/quant_matmul.py; echo "== weight words loaded $v"; b; done
cp /tmp/qm_base.py kernels/quant_matmul.py; echo "== shipped again"; b
