"""Decode GEMV tiles on the GPU: bandwidth per weight shape and format, for each tile config.

    python benchmarks/gemv_sweep.py [--shape llama3-8b]
    python benchmarks/gemv_sweep.py --kernel mma --write-table kernels/tuning/NAME.mma.json

For every distinct (format, rows, cols) of the shape's Q4_K_M and Q8_0 mixes, times `qgemv`
over a grid of (block_n, tiles, split_k, num_warps) and prints the weight bytes moved per
second; the default heuristic (`gemv_config`) is shown beside the best found. With --kernel mma,
every Q4_K and Q6_K shape (gate/up through the gated epilogue, as decode runs it) is timed
through the tensor-core GEMV (`kernels/mma_gemv.py`, every kind of operands that multiplies the
format unless --operands says) over
its grid against the Triton GEMV at its tuned tiles, and the table records the shapes where a
tensor-core GEMV is faster (those it lacks stay on Triton); the GPU's current table's config of
each shape is timed as well. Timing is of a
CUDA graph of back-to-back calls over enough copies of the weight to miss the L2 cache, as in
decode (a Python-launched call of a small GEMV measures the launch, not the kernel).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from impdiff.engine.config import ARCHITECTURES
from impdiff.engine.packed import pack_gguf
from impdiff.kernels import cuda_driver, mma_gemv
from impdiff.kernels.launch import pdl_enabled, tuning_table
from impdiff.kernels.quant_matmul import GemvConfig, gemv_config, qgemv, qgemv_gated, sm_count
from impdiff.testing.shapes import SHAPES, T, _random_blocks, tensor_types


def graph_gbs(items, run, reps: int = 5) -> float:
    """GB/s of run(item) over `items` in turn (their bytes: weights, or buffers read), timed as
    one CUDA graph replay."""
    for item in items:  # compile and warm outside the capture
        run(item)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for item in items:
            run(item)
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return reps * sum(item.nbytes for item in items) / (start.elapsed_time(end) * 1e6)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="llama3-8b")
    ap.add_argument("--mix", default="Q4_K_M,Q8_0")
    ap.add_argument("--write-table", help="JSON of the best config per shape, for "
                                          "$IMPDIFF_GEMV_TABLE (--kernel mma: $IMPDIFF_MMA_TABLE)")
    ap.add_argument("--kernel", choices=("triton", "mma"), default="triton")
    ap.add_argument("--operands", default="f16,i8",
                    help="--kernel mma: the tensor-core GEMVs to sweep (mma_gemv.SOURCES)")
    ap.add_argument("--types", help="only these GGML types, e.g. Q6_K (the table written "
                                     "holds only their shapes)")
    ap.add_argument("--once", nargs=3, metavar=("TYPE", "ROWS", "COLS"),
                    help="run one GEMV of a random TYPE weight with the default config, for a "
                         "profiler (ncu -k regex:_qgemv_kernel)")
    args = ap.parse_args()
    if args.once:
        qtype, rows, cols = T[args.once[0]], int(args.once[1]), int(args.once[2])
        blocks = _random_blocks(np.random.default_rng(0), qtype, rows, cols)
        w = pack_gguf(blocks, qtype, (rows, cols), "cuda")
        for _ in range(3):
            qgemv(torch.randn(cols, device="cuda"), w)
        torch.cuda.synchronize()
        return
    if args.kernel == "mma":
        return sweep_mma(args)
    shape = SHAPES[args.shape]
    rng = np.random.default_rng(0)
    seen, table = set(), {}
    for mix in args.mix.split(","):
        for kind, qtype, rows, cols in decode_products(tensor_types(shape, mix), shape.n_layer):
            if (qtype, rows, cols) in seen or not wanted(args, qtype):
                continue
            seen.add((qtype, rows, cols))
            w, copies, x = random_inputs(rng, qtype, rows, cols)
            default = gemv_config(w, sm_count(x.device))
            results = []
            for bn, lanes, split, warps in itertools.product((2, 4, 8), (2, 4, 8), (1, 2),
                                                             (1, 2, 4)):
                # a step's tiles fill the warps' lanes exactly: no lane on the in-thread sums
                cfg = GemvConfig(bn, lanes, 32 * warps // lanes, split, warps)
                if w.tiles < cfg.tiles * split or w.fmt.group < 4 * lanes:
                    continue
                try:
                    results.append((graph_gbs(copies, lambda v: qgemv(x, v, config=cfg)), cfg))
                except Exception as exc:  # a config the compiler refuses (registers, shared)
                    print(f"  {cfg}: {type(exc).__name__}")
            results.sort(key=lambda r: -r[0])
            best = results[0][1]
            table[f"{w.fmt.name} {rows} {cols}"] = [best.block_n, best.lanes, best.tiles,
                                                    best.split_k, best.num_warps]
            default_gbs = graph_gbs(copies, lambda v: qgemv(x, v, config=default))
            print(f"{qtype.name} {rows}x{cols} ({kind}, {w.nbytes / 1e6:.1f} MB): default "
                  f"{default} {default_gbs:.0f} GB/s; best: " +
                  "; ".join(f"{c.block_n}/{c.lanes}/{c.tiles}/{c.split_k}/{c.num_warps} {g:.0f}"
                            for g, c in results[:4]), flush=True)
            write_table(args.write_table, table)


def wanted(args, qtype: T) -> bool:
    return not args.types or qtype.name in args.types.split(",")


def sweep_mma(args):
    """The tensor-core K-quant GEMVs against the Triton one, per Q4_K and Q6_K decode shape."""
    shape, rng, table, seen = SHAPES[args.shape], np.random.default_rng(0), {}, set()
    for kind, qtype, rows, cols in decode_products(tensor_types(shape, "Q4_K_M"), shape.n_layer):
        gated = kind == "ffn_gate+ffn_up"
        if (qtype not in (T.Q4_K, T.Q6_K) or (qtype, rows, cols, gated) in seen
                or not wanted(args, qtype)):
            continue
        seen.add((qtype, rows, cols, gated))
        w, copies, x = random_inputs(rng, qtype, rows, cols)
        tiles = gemv_config(w, sm_count(x.device))
        act = ARCHITECTURES[shape.arch].ffn_act if gated else None
        triton_gbs = graph_gbs(copies, (
            (lambda v: qgemv_gated(x, v, act, config=tiles)) if gated
            else (lambda v: qgemv(x, v, config=tiles))))
        configs = []
        for operands in args.operands.split(","):
            if w.fmt.name not in mma_gemv.MULTIPLIES[operands]:
                continue
            # the i8 kernel's four row blocks spill registers
            row_blocks_grid = (1, 2) if operands == "i8" else (1, 2, 4)
            for warps, row_blocks, split, k_warps in itertools.product(
                    (2, 4, 8), row_blocks_grid, (1, 2, 4), (1, 2, 4, 8)):
                # K split by blocks (a second kernel adds their sums) or by a block's warps
                cfg = mma_gemv.MmaConfig(warps, row_blocks, split, k_warps, operands)
                if (cfg.fits(w, gated) and cols // 256 >= 2 * split * k_warps and k_warps <= warps
                        and (split == 1 or k_warps == 1)):
                    configs.append(cfg)
        key = mma_gemv.table_key(w.fmt.name, gated, rows, cols)
        shipped = tuning_table(mma_gemv.TABLE_ENV, ".mma.json").get(key)
        if shipped and mma_gemv.MmaConfig(*shipped) not in configs:  # --operands left it out
            configs.append(mma_gemv.MmaConfig(*shipped))
        prebuild(x.device, configs, mma_gemv.ACT_CODES[act], w.fmt.name)
        results = sorted(((graph_gbs(copies, lambda v: mma_gemv.gemv(x, v, act=act, config=cfg)),
                           cfg) for cfg in configs), key=lambda r: -r[0])
        best_gbs, best = results[0]
        if best_gbs > triton_gbs:
            table[key] = [best.warps, best.row_blocks, best.split_k, best.k_warps,
                          best.operands]
        print(f"{key} ({kind}, {w.nbytes / 1e6:.1f} MB): triton {tiles} {triton_gbs:.0f} GB/s; "
              "mma " + "; ".join(f"{c.operands} {c.warps}/{c.row_blocks}/{c.split_k}/"
                                 f"{c.k_warps} {g:.0f}" for g, c in results[:6])
              + f" -> {'mma' if key in table else 'triton'}", flush=True)
        write_table(args.write_table, table)


def prebuild(device, configs, act: int, fmt: str):
    """nvcc takes a second or so a kernel and a shape's grid holds dozens: build them on every
    core first (the cubin cache then serves the sweep)."""
    jobs = [mma_gemv.build_args(device, cfg, act, pdl_enabled(device), fmt) for cfg in configs]
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(lambda job: cuda_driver.compile_cubin(*job), jobs))


def random_inputs(rng, qtype, rows: int, cols: int):
    """A random weight of the type on the GPU, copies of it past the L2 cache's 50 MB (decode
    reads each weight from memory), and an activation."""
    w = pack_gguf(_random_blocks(rng, qtype, rows, cols), qtype, (rows, cols), "cuda")
    copies = [w] + [clone(w) for _ in range(200_000_000 // w.nbytes)]
    return w, copies, torch.randn(cols, device="cuda")


def write_table(path: str | None, table: dict):
    """After every shape: a sweep cut short still leaves a table."""
    if path:
        with open(path, "w") as f:
            json.dump(table, f, indent=1)


def decode_products(types: dict, n_layer: int) -> list[tuple[str, T, int, int]]:
    """(name, type, rows, cols) of each GEMV a decode step runs: the fast path fuses runs of
    neighbouring weights of one type (Q with K, [Q, K, V], gate with up), so those are timed
    at their fused height."""
    out = [("output", *types.get("output.weight", types["token_embd.weight"]))]
    for i in range(n_layer):
        for group in (("attn_q", "attn_k", "attn_v"), ("attn_output",), ("ffn_gate", "ffn_up"),
                      ("ffn_down",)):
            run: list[str] = []
            for name in group:
                qtype = types[f"blk.{i}.{name}.weight"][1]
                if run and types[f"blk.{i}.{run[-1]}.weight"][1] != qtype:
                    out.append(_fused(types, i, run))
                    run = []
                run.append(name)
            out.append(_fused(types, i, run))
    return [(kind, qtype, rows, cols) for kind, (rows, cols), qtype in out]


def _fused(types, i, names):
    (_, cols), qtype = types[f"blk.{i}.{names[0]}.weight"]
    rows = sum(types[f"blk.{i}.{n}.weight"][0][0] for n in names)
    return ("+".join(names), (rows, cols), qtype)


def clone(w):
    return w.to("cpu").to("cuda")


if __name__ == "__main__":
    main()
