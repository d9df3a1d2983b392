source benchmarks/device_env.sh
nvidia-smi --query-gpu=name --format=csv,noheader
for v in A B; do cp .carry/tools/qm_$v.py kernels/quant_matmul.py; python .carry/tools/exp_gemv.py $v 2>&1 | grep -v Warn; done
