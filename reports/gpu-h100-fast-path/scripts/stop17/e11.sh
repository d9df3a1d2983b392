source benchmarks/device_env.sh
python .carry/dev17/e11.py 2>&1 | tee $OUT/e11.txt
