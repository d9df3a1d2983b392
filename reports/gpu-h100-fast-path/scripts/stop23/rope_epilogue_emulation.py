"""Stop 23: kquant_imma_gemv.cu's ROPE epilogue (ROPE=1) replayed lane by lane in numpy, as
its code reads: each lane (g, t) holding rows g and g + 8 of a 16-row block after the sums,
the partner row from lane ^ 4 (`__shfl_xor_sync(val, 4)`), cos/sin picked by the row's place
in its head (1, 0 for V and past n_rot), the stores of lanes t = 0: Q to q, K and V into the
cache row at the position. Against the engine's reference `apply_rope` on the same product,
for [Q; K; V] as one weight and as Q+K | V (row0). Checked on a CPU before any GPU ran it.

    python reports/gpu-h100-fast-path/scripts/stop23/rope_epilogue_emulation.py
"""
import numpy as np
import torch

from impdiff.engine.model import apply_rope, rope_angles

n_q, n_kv, d, n_rot, pos, S = 32, 8, 128, 96, 5, 16  # n_rot < d: the unrotated tail too
q_rows, k_rows = n_q * d, n_kv * d
cos, sin = (t.numpy() for t in rope_angles(torch.arange(S), n_rot, 10000.0, 1.0, None))
product = np.random.default_rng(0).standard_normal(q_rows + 2 * k_rows).astype(np.float32)


def epilogue(rows: np.ndarray, row0: int, q, k_cache, v_cache):
    """One weight's rows (its slice of the product) through the epilogue, 16 at a time."""
    for first in range(0, len(rows), 16):
        val = np.array([[rows[first + (lane >> 2)], rows[first + (lane >> 2) + 8]]
                        for lane in range(32)], np.float32)  # [lane][h]
        mate = val[np.arange(32) ^ 4]  # __shfl_xor_sync(FULL, val, 4)
        for lane in range(0, 32, 4):  # t == 0
            g = lane >> 2
            for h in range(2):
                i = row0 + first + g + 8 * h
                dd = i % d
                turns = dd < n_rot and i < q_rows + k_rows
                c = cos[pos, dd // 2] if turns else np.float32(1)
                s = sin[pos, dd // 2] if turns else np.float32(0)
                v, m = val[lane, h], mate[lane, h]
                y = m * s + v * c if i & 1 else v * c - m * s
                if i < q_rows:
                    q[i] = y
                elif i < q_rows + k_rows:
                    k_cache[pos * k_rows + i - q_rows] = np.float16(y)
                else:
                    v_cache[pos * k_rows + i - q_rows - k_rows] = np.float16(v)


t = torch.from_numpy(product).view(1, n_q + 2 * n_kv, d)
c, s = torch.from_numpy(cos[pos:pos + 1]), torch.from_numpy(sin[pos:pos + 1])
want_q = apply_rope(t[:, :n_q], c, s, n_rot, False).numpy().reshape(-1)
want_k = apply_rope(t[:, n_q:n_q + n_kv], c, s, n_rot, False).numpy().reshape(-1)
want_v = t[:, n_q + n_kv:].numpy().reshape(-1)
for name, bounds in (("[Q; K; V] one weight", [0, q_rows + 2 * k_rows]),
                     ("Q+K | V", [0, q_rows + k_rows, q_rows + 2 * k_rows])):
    q = np.full(q_rows, np.nan, np.float32)
    k_cache = np.zeros(S * k_rows, np.float16)
    v_cache = np.zeros(S * k_rows, np.float16)
    for lo, hi in zip(bounds, bounds[1:]):
        epilogue(product[lo:hi], lo, q, k_cache, v_cache)
    others = np.delete(np.arange(S), pos)
    k_row, v_row = (c.reshape(S, -1)[pos] for c in (k_cache, v_cache))
    untouched = not any(c.reshape(S, -1)[others].any() for c in (k_cache, v_cache))
    print(f"{name}: Q {np.abs(q - want_q).max() / np.abs(want_q).max():.1e}, "
          f"K {np.abs(k_row - want_k.astype(np.float16)).max()}, "
          f"V equal {np.array_equal(v_row, want_v.astype(np.float16))}, "
          f"other cache rows untouched {untouched}")
