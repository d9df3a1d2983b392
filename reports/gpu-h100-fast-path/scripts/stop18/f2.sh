# Stop 18 f2: graph profile of the 8B step, base / deferred norms / deferred with the sums summed after the loop; benches of the three
source benchmarks/device_env.sh
mkdir -p /tmp/base /tmp/late /tmp/parts && tar -xf .carry/base18.tar -C /tmp/base && (cd /tmp/base && ln -sfn ../engine impdiff/engine && ln -sfn ../kernels impdiff/kernels)
cp -r engine kernels impdiff /tmp/late/
(cd /tmp/late && rm -f impdiff/engine impdiff/kernels && ln -sfn ../engine impdiff/engine && ln -sfn ../kernels impdiff/kernels && patch -p1 < $OLDPWD/.carry/dev18/late_sum.patch)
for c in sa sb sc sd; do [ -f .carry/$c ] && cp .carry/$c /tmp/parts/; done
[ -f /tmp/l8q4.gguf ] || python -m impdiff.testing.shapes llama3-8b Q4_K_M /tmp/l8q4.gguf > /dev/null
python -m pytest -q -p no:cacheprovider tests/test_mma_gemv.py -k deferred --tb=short 2>&1 | tail -3 | tee $OUT/f2_tests.txt
for tree in base new late; do
  case $tree in base) P=/tmp/cuda_site:/tmp/base:/tmp/site;; late) P=/tmp/cuda_site:/tmp/late:/tmp/site;; *) P=$PYTHONPATH;; esac
  echo "== $tree" | tee -a $OUT/f2_profile.txt
  PYTHONPATH=$P python .carry/dev18/profile_graph.py /tmp/l8q4.gguf 2>&1 | grep -v Warning | tee -a $OUT/f2_profile.txt
done
for i in 1 2; do for tree in base new late; do
  case $tree in base) P=/tmp/cuda_site:/tmp/base:/tmp/site;; late) P=/tmp/cuda_site:/tmp/late:/tmp/site;; *) P=$PYTHONPATH;; esac
  PYTHONPATH=$P impdiff bench -m /tmp/l8q4.gguf --device cuda --runtimes engine -p 0 -n 128 -r 3 --bandwidth 3350 2>&1 | grep -E "tg128|rror" | sed "s/^/$tree /" | tee -a $OUT/f2_bench.txt
done; done
