source benchmarks/device_env.sh
python .carry/dev17/e1.py 2>&1 | tee $OUT/e2.txt
