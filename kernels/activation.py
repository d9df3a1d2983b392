"""The FFN's gated activation, act(gate) * up, in one kernel (torch would take two); `activate` is
also the epilogue of the gate/up GEMV (`quant_matmul.qgemv_gated`)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

ACTIVATIONS = {"silu": 1, "gelu_tanh": 2}


@triton.jit
def activate(g, ACT: tl.constexpr):
    """The FFN activation of float32 `g` (ACT: a value of ACTIVATIONS)."""
    if ACT == 1:  # silu
        return g / (1.0 + tl.exp(-g))
    # gelu, tanh approximation; tanh(z) = 1 - 2 / (1 + e^2z)
    z = 0.7978845608028654 * (g + 0.044715 * g * g * g)
    return g * (1.0 - 1.0 / (1.0 + tl.exp(2.0 * z)))


@triton.jit
def _gated_kernel(gate_ptr, up_ptr, out_ptr, n, stride_g, stride_u, ACT: tl.constexpr,
                  BLOCK: tl.constexpr):
    t = tl.program_id(1)
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = i < n
    g = tl.load(gate_ptr + t * stride_g + i, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(up_ptr + t * stride_u + i, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + t * n + i, activate(g, ACT) * u, mask=mask)


def gated_activation(act: str, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """act(gate) * up for [T, n] gate and up (row-strided views allowed) -> [T, n] float32."""
    T, n = gate.shape
    out = torch.empty((T, n), device=gate.device, dtype=torch.float32)
    block = 1024
    _gated_kernel[(triton.cdiv(n, block), T)](gate, up, out, n, gate.stride(0), up.stride(0),
                                               ACT=ACTIVATIONS[act], BLOCK=block, num_warps=4)
    return out
