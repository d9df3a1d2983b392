source benchmarks/device_env.sh
nvidia-smi --query-gpu=name --format=csv,noheader
setsid nohup bash benchmarks/device_build_llamacpp.sh $PWD/.carry/lcp.tar.xz > /tmp/lcp_build.log 2>&1 &

mkdir -p /tmp/base && tar -xf .carry/base.tar -C /tmp/base && ln -sfn ../engine /tmp/base/impdiff/engine && ln -sfn ../kernels /tmp/base/impdiff/kernels
echo "== kernel tests"; python -m pytest -q tests/test_kernels.py 2>&1 | tail -3
