source benchmarks/device_env.sh
nvidia-smi --query-gpu=name --format=csv,noheader
setsid nohup bash benchmarks/device_build_llamacpp.sh $PWD/.carry/lcp.tar.xz > /tmp/lcp_build.log 2>&1 &
echo "== kernel tests"; python -m pytest -q tests/test_kernels.py 2>&1 | tail -2
echo "== sweep"; python benchmarks/gemv_sweep.py --write-table /tmp/table.json 2>&1 | grep -v Warn
cp /tmp/table.json $OUT/table.json
ls /tmp/lcp_done 2>&1; tail -2 /tmp/lcp_build.log
