source benchmarks/device_env.sh
unset IMPDIFF_GEMV_TABLE  # the shipped table for this GPU
python -m impdiff.testing.shapes llama3-8b Q8_0 /tmp/l8q8.gguf 2>&1 | tail -1
echo "== llama3-8b Q8_0"; impdiff bench -m /tmp/l8q8.gguf --device cuda --gpu-layers 99 -p 512 -n 128 -r 3 --bandwidth 3350 2>&1 | grep -v Warn
echo "== taps"; python benchmarks/tap_overhead.py --fast --model /tmp/gemma3.gguf --tokens 2048 -r 3 --device cuda 2>&1 | tail -4
echo "== profile"; python benchmarks/profile_decode.py /tmp/l8q4.gguf 2>&1 | grep -E "Name|kernel|Self CUDA time" | head -12
