#!/bin/bash
# Build llama-cpp-python with CUDA (sm_90a) on the GPU machine from the carried, stripped sdist,
# into /tmp/cuda_site; /tmp/lcp_done marks success. Meant to run detached (setsid) beside work.
set -e
cd /tmp && tar xJf "$1" && cd llama_cpp_python-0.3.36
CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90a -DLLAVA_BUILD=off" CMAKE_BUILD_PARALLEL_LEVEL=16 \
    python3 -m pip wheel --no-build-isolation --no-deps -w /tmp/lcpwheel . > /tmp/lcp_build.log 2>&1
python3 -m pip install -q --no-deps --target /tmp/cuda_site /tmp/lcpwheel/*.whl
touch /tmp/lcp_done
