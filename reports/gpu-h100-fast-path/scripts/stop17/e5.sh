source benchmarks/device_env.sh
python .carry/dev17/e1.py --no-sweep 2>&1 | grep -E "x\*|gated|compile" | tee $OUT/e5_check.txt | tail -8
python .carry/dev17/e3.py sweep 2>&1 | tee $OUT/e5.txt
CFG=4/4/1/1 bash -c 'NCU=/usr/local/cuda/bin/ncu; $NCU -k regex:q4k_mma_gemv --launch-skip 1 --launch-count 1 --section SpeedOfLight --section Occupancy --section SchedulerStats --section MemoryWorkloadAnalysis python .carry/dev17/e3.py once $CFG' > $OUT/e5_ncu.txt 2>&1
grep -E "Throughput|Duration|Occupancy|Eligible|Issued|Active Warps|Registers|Hit Rate" $OUT/e5_ncu.txt | head -30
