source benchmarks/device_env.sh
python -m impdiff.testing.shapes llama3-8b Q4_K_M /tmp/l8q4.gguf > /dev/null &
mkdir -p /tmp/base && tar -xf .carry/base17.tar -C /tmp/base && (cd /tmp/base && ln -sfn ../engine impdiff/engine && ln -sfn ../kernels impdiff/kernels)
base() { (cd /tmp/base && PYTHONPATH=/tmp/base:/tmp/site python3 -c 'import sys; from impdiff.cli import main; sys.argv[0] = "impdiff"; main()' "$@"); }
wait
python .carry/dev17/e14.py /tmp/l8q4.gguf 2>&1 | tail -1 | tee $OUT/e15_greedy.txt
for i in 1 2; do
  impdiff bench -m /tmp/l8q4.gguf --device cuda --runtimes engine -p 0 -n 128 -r 3 --bandwidth 3350 2>&1 | grep -E "tg128|rror" | sed "s/^/prefetch /" | tee -a $OUT/e15_bench.txt
  base bench -m /tmp/l8q4.gguf --device cuda --runtimes engine -p 0 -n 128 -r 3 --bandwidth 3350 2>&1 | grep -E "tg128|rror" | sed "s/^/no-prefetch /" | tee -a $OUT/e15_bench.txt
done
