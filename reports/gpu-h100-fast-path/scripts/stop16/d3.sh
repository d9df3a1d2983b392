source benchmarks/device_env.sh
nvidia-smi --query-gpu=name --format=csv,noheader
t0=$(date +%s)
[ -f /tmp/l8q4.gguf ] || python -m impdiff.testing.shapes llama3-8b Q4_K_M /tmp/l8q4.gguf 2>&1 | tail -1
rm -rf /tmp/base && mkdir -p /tmp/base && tar -xf .carry/base.tar -C /tmp/base && (cd /tmp/base && ln -sfn ../engine impdiff/engine && ln -sfn ../kernels impdiff/kernels)
b() { impdiff bench -m /tmp/l8q4.gguf --device cuda --runtimes engine -p 0 -n 128 -r 3 --bandwidth 3350 "$@" 2>&1 | grep "tg128"; }
bb() { (cd /tmp/base && PYTHONPATH=/tmp/cuda_site:/tmp/base:/tmp/site python3 -c 'import sys; from impdiff.cli import main; sys.argv[0]="impdiff"; main()' bench -m /tmp/l8q4.gguf --device cuda --runtimes engine -p 0 -n 128 -r 3 --bandwidth 3350 2>&1 | grep tg128); }
echo "== base (a88f4b7) float"; bb
echo "== new --exact (float GEMV, _param bases)"; b --exact
echo "== base again"; bb
echo "== new int"; b
NCU="/usr/local/cuda/bin/ncu --section SpeedOfLight --section Occupancy --section SchedulerStats --section WarpStateStats --section MemoryWorkloadAnalysis -k regex:_qgemv_int -c 1"
for cfg in 2,2,16,1,1 4,2,16,1,1; do echo "== ncu int Q4_K 28672x4096 $cfg"; $NCU python benchmarks/gemv_sweep.py --once Q4_K 28672 4096 --kernel int --config $cfg 2>&1 | grep -v "^==PROF==" | grep -E "^\s+(DRAM|Memory|Duration|L1|L2|SM |Compute|Issued|No Elig|Active Warps|Eligible|Registers|Theoretical|Achieved|Stall|Warp Cycles|Avg|Mem Busy|Max Band|L1/TEX Hit|L2 Hit|Mem Pipes)" ; done
echo "== ncu float Q4_K 28672x4096 tuned"
/usr/local/cuda/bin/ncu --section SpeedOfLight --section WarpStateStats -k regex:_qgemv_kernel -c 1 python benchmarks/gemv_sweep.py --once Q4_K 28672 4096 2>&1 | grep -E "^\s+(DRAM|Memory Th|Duration|Issued|Warp Cycles|Stall)"
echo "done $(( $(date +%s) - t0 )) s"
