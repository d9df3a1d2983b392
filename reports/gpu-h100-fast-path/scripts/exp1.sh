source benchmarks/device_env.sh
nvidia-smi --query-gpu=name --format=csv,noheader
cp kernels/quant_matmul.py /tmp/qm_new.py
cp .carry/tools/qm_old.py kernels/quant_matmul.py
python .carry/tools/exp_gemv.py old 2>&1 | grep -v Warn
cp /tmp/qm_new.py kernels/quant_matmul.py
GEMV_PREFETCH=0 python .carry/tools/exp_gemv.py new-nopf 2>&1 | grep -v Warn
GEMV_PREFETCH=1 python .carry/tools/exp_gemv.py new-pf 2>&1 | grep -v Warn
