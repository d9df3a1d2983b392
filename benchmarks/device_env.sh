# Source on the GPU machine (repo root): carried wheels into /tmp/site, the package importable
# under its installed names (impdiff.engine <- engine/, impdiff.kernels <- kernels/), an `impdiff`
# command, and a CUDA llama-cpp-python first on the path once device_build_llamacpp.sh made it.
if ls .whl/*.whl >/dev/null 2>&1; then  # carried on a machine's first call; kept after
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || return 1
fi
ln -sfn ../engine impdiff/engine && ln -sfn ../kernels impdiff/kernels  # this copy of the tree only
export PYTHONPATH=/tmp/cuda_site:$PWD:/tmp/site PYTHONUNBUFFERED=1
impdiff() { python3 -c 'import sys; from impdiff.cli import main; sys.argv[0] = "impdiff"; main()' "$@"; }
