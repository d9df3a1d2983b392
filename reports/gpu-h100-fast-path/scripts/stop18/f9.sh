# Stop 18 f9: the critical-path profile of the deferred-norm variant (deferred_norms.patch on 6d24657), beside the base
source benchmarks/device_env.sh
[ -f /tmp/l8q4.gguf ] || python -m impdiff.testing.shapes llama3-8b Q4_K_M /tmp/l8q4.gguf > /dev/null
mkdir -p /tmp/defer /tmp/base && tar -xf .carry/base18.tar -C /tmp/defer && tar -xf .carry/base18.tar -C /tmp/base
(cd /tmp/defer && git apply --include='engine/*' --include='kernels/*' $OLDPWD/.carry/dev18/deferred_norms.patch && ln -sfn ../engine impdiff/engine && ln -sfn ../kernels impdiff/kernels)
(cd /tmp/base && ln -sfn ../engine impdiff/engine && ln -sfn ../kernels impdiff/kernels)
for tree in base defer; do
  echo "== $tree" | tee -a $OUT/f9_chain.txt
  PYTHONPATH=/tmp/cuda_site:/tmp/$tree:/tmp/site python .carry/dev18/chain_profile.py /tmp/l8q4.gguf 2>&1 | grep -v -i warn | tee -a $OUT/f9_chain.txt
done
