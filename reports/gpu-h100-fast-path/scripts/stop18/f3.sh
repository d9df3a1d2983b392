# Stop 18 f3: SmolLM2-135M (llama, deferred norms apply): greedy against the CPU reference, then tg128 base (6d24657) / new / late, two rounds
source benchmarks/device_env.sh
for c in sa sb sc sd; do [ -f .carry/$c ] && cp .carry/$c /tmp/parts/; done
cat /tmp/parts/sa /tmp/parts/sb /tmp/parts/sc /tmp/parts/sd > /tmp/smollm2.gguf && ls -la /tmp/smollm2.gguf
python benchmarks/fast_vs_reference.py check /tmp/smollm2.gguf .carry/smollm2-greedy.json 2>&1 | tail -3 | tee $OUT/f3_greedy.txt
for i in 1 2; do for tree in base new late; do
  case $tree in base) P=/tmp/cuda_site:/tmp/base:/tmp/site;; late) P=/tmp/cuda_site:/tmp/late:/tmp/site;; *) P=$PYTHONPATH;; esac
  PYTHONPATH=$P impdiff bench -m /tmp/smollm2.gguf --device cuda --runtimes engine -p 0 -n 128 -r 3 2>&1 | grep -E "tg128|rror" | sed "s/^/$tree /" | tee -a $OUT/f3_bench.txt
done; done
