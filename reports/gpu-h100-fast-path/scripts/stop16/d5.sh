source benchmarks/device_env.sh
nvidia-smi --query-gpu=name --format=csv,noheader
M='--metrics regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio,smsp__issue_active.avg.pct_of_peak_sustained_active,sm__warps_active.avg.pct_of_peak_sustained_active,dram__throughput.avg.pct_of_peak_sustained_elapsed,gpu__time_duration.sum,launch__registers_per_thread,l1tex__throughput.avg.pct_of_peak_sustained_active'
for spec in "Q4_K 28672 4096" "Q8_0 28672 4096" "Q6_K 4096 14336" "Q4_K 4096 4096"; do
  echo "== float GEMV $spec (tuned config)"
  /usr/local/cuda/bin/ncu $M -k regex:_qgemv_kernel -c 1 python benchmarks/gemv_sweep.py --once $spec 2>&1 | grep -v "^==PROF==" | grep -E "stalled|issue_active|warps_active|dram__|duration|registers|l1tex" | awk '$NF+0 > 0.05 || /duration|registers|dram|issue|warps_active|l1tex/' | sed 's/smsp__average_warps_issue_stalled_//; s/_per_issue_active.ratio//'
done
