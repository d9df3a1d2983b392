source benchmarks/device_env.sh
for m in "" 64 56 48; do GEMV_MAXNREG=$m python .carry/tools/exp_gemv.py "maxnreg=${m:-none}" 2>&1 | grep -v Warn | head -4; done
