"""What one kernel can read per second at the sizes of a decode step's weights, on this GPU.

A plain read (`stream_read.cu`, no arithmetic) of N bytes, launched 2-16 times over distinct
buffers in one CUDA graph, best over loads in flight per thread, block size and blocks per SM.
Twice: launches in stream order (each read starts when the one before has ended, as a GEMV
waiting on its input does) and as programmatic dependents that never wait (back-to-back reads
overlap, the bound for a step with no dependency between its GEMVs). A GEMV below the first
figure at its size loses to its own loop; the gap between the two is what the ends of kernels
cost at that size.

    python benchmarks/stream_ceiling.py [--sizes 9.7,14.5,33.9,67.9,430]
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import torch

from gemv_sweep import graph_gbs  # (benchmarks/ is on the path: this script's folder)
from impdiff.kernels import cuda_driver
from impdiff.kernels.launch import sm_count

SOURCE = Path(__file__).with_name("stream_read.cu")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="9.7,14.5,33.9,67.9,430",
                    help="MB read per launch (default: the 8B Q4_K_M step's GEMV sizes)")
    args = ap.parse_args()
    dev = torch.device("cuda")
    major, minor = torch.cuda.get_device_capability(dev)
    sms, sink = sm_count(dev), torch.zeros(1, dtype=torch.int32, device=dev)
    print(f"{torch.cuda.get_device_name(dev)}, {sms} SMs")
    for mb in (float(s) for s in args.sizes.split(",")):
        n16 = int(mb * 1e6) // 16
        count = max(2, min(16, int(2.2e9 // (n16 * 16))))  # past L2, within memory
        buffers = [torch.empty(n16 * 16, dtype=torch.uint8, device=dev) for _ in range(count)]
        best = {}
        for unroll, threads, per_sm, pdl in itertools.product((2, 4, 8), (256, 512), (1, 2, 4),
                                                               (0, 1)):
            kernel = cuda_driver.Kernel(cuda_driver.compile_cubin(
                SOURCE, f"sm_{major}{minor}", dict(UNROLL=unroll, PDL=pdl)), "stream_read", dev)
            if kernel.blocks_per_sm(threads, 0) < per_sm:
                continue
            blocks = min(sms * per_sm, -(-n16 // (threads * unroll)))

            def launch(b):
                kernel((blocks, 1), threads, 0, torch.cuda.current_stream(dev).cuda_stream,
                       b, n16, sink, pdl=bool(pdl))

            gbs = graph_gbs(buffers, launch)
            if gbs > best.get(pdl, (0,))[0]:
                best[pdl] = (gbs, unroll, threads, per_sm)
        print(f"{mb:7.1f} MB x{count}: in stream order {best[0][0]:5.0f} GB/s "
              f"(unroll {best[0][1]}, {best[0][2]} threads, {best[0][3]} blocks/SM); "
              f"overlapping {best[1][0]:5.0f} GB/s", flush=True)
        del buffers


if __name__ == "__main__":
    main()
