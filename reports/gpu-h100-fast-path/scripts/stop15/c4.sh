source benchmarks/device_env.sh
for i in $(seq 100); do [ -f /tmp/lcp_done ] && break; sleep 5; done; ls /tmp/lcp_done
echo "== kernel tests"; python -m pytest -q tests/test_kernels.py 2>&1 | tail -2
[ -f /tmp/l8q4.gguf ] || python -m impdiff.testing.shapes llama3-8b Q4_K_M /tmp/l8q4.gguf 2>&1 | tail -1
echo "== llama3-8b Q4_K_M"; impdiff bench -m /tmp/l8q4.gguf --device cuda --gpu-layers 99 -p 512 -n 128 -r 3 --bandwidth 3350 2>&1 | grep -v Warn
echo "== l8q4 engine tg128, baseline 5907bdf"; (cd /tmp/base && PYTHONPATH=/tmp/cuda_site:/tmp/base:/tmp/site python3 -c 'import sys; from impdiff.cli import main; sys.argv[0] = "impdiff"; main()' bench -m /tmp/l8q4.gguf --device cuda --runtimes engine -p 0 -n 128 -r 5 --bandwidth 3350 2>&1 | grep -E "tg|engine" | tail -2)
echo "== l8q4 engine tg128, this commit"; impdiff bench -m /tmp/l8q4.gguf --device cuda --runtimes engine -p 0 -n 128 -r 5 --bandwidth 3350 2>&1 | grep -E "tg|engine" | tail -2
echo "== profile"; python benchmarks/profile_decode.py /tmp/l8q4.gguf 2>&1 | grep -E "Name|kernel|Self CUDA time" | cut -c1-60,150-260 | head -12
