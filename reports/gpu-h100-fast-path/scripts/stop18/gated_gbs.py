"""Stop 18: GB/s of the gated gate/up GEMV (tensor-core kernel, shipped config) as the sweep times it."""
import sys
import numpy as np, torch
sys.path.insert(0, "benchmarks")
from gemv_sweep import graph_gbs, random_inputs
from impdiff.kernels.quant_matmul import qgemv_gated
from impdiff.testing.shapes import T
w, copies, x = random_inputs(np.random.default_rng(0), T.Q4_K, 28672, 4096)
print("gate/up 28672x4096 gated:", " / ".join(f"{graph_gbs(copies, x, None, gemv=lambda v: qgemv_gated(x, v, 'silu')):.0f}" for _ in range(3)), "GB/s")
