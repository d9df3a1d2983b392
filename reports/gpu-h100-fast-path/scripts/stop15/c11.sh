source benchmarks/device_env.sh
b() { impdiff bench -m /tmp/l8q4.gguf --device cuda --runtimes engine -p 0 -n 128 -r 5 --bandwidth 3350 2>&1 | grep tg; }
cp kernels/quant_matmul.py /tmp/qm_base.py
for v in ef efx ef; do cp .carry/tools/qm_$v.py kernels/quant_matmul.py; echo "== $v"; b; done
cp /tmp/qm_base.py kernels/quant_matmul.py; echo "== shipped"; b
