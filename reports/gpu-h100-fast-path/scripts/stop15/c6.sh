source benchmarks/device_env.sh
python -m pytest -q tests/test_kernels.py -k "residual_norm or fast_model or graph" 2>&1 | tail -1
for r in 1 2; do echo "== l8q4 engine tg128, this commit"; impdiff bench -m /tmp/l8q4.gguf --device cuda --runtimes engine -p 512 -n 128 -r 5 --bandwidth 3350 2>&1 | grep -E "tg|pp" | tail -2; done
echo "== llama3-8b Q4_K_M"; impdiff bench -m /tmp/l8q4.gguf --device cuda --gpu-layers 99 -p 512 -n 128 -r 3 --bandwidth 3350 2>&1 | grep -v Warn
echo "== profile"; python benchmarks/profile_decode.py /tmp/l8q4.gguf 2>&1 | grep -E "Name|kernel|Self CUDA time" | cut -c1-60,150-260 | head -12
