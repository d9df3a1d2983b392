source benchmarks/device_env.sh; python .carry/dev17/e12.py 2>&1 | tee $OUT/e12.txt
