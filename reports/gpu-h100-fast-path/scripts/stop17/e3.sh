source benchmarks/device_env.sh
python .carry/dev17/e3.py sweep 2>&1 | tee $OUT/e3.txt
NCU=/usr/local/cuda/bin/ncu
$NCU --launch-skip 2 --launch-count 2 --section SpeedOfLight --section Occupancy --section WarpStateStats --section MemoryWorkloadAnalysis --section LaunchStats --metrics dram__bytes_read.sum,lts__t_bytes.sum,smsp__issue_active.avg.pct_of_peak_sustained_active python .carry/dev17/e3.py once 8/2/1/2/1 > $OUT/e3_ncu.txt 2>&1
grep -E "^  [a-z_]|DRAM Throughput|Memory Throughput|Duration|Achieved Occupancy|Registers|Issue|Stall|dram__bytes|lts__t_bytes|issue_active|Theoretical Occ|Block Limit|Warp Cycles|Eligible|L2 Hit|Mem Busy|Max Bandwidth" $OUT/e3_ncu.txt | head -90
