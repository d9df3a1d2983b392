"""llama.cpp alone, llama-bench's pp/tg tests through llama-cpp-python's C API (no torch in the
process): `python benchmarks/llamacpp_bench.py MODEL [-p 512] [-n 128] [-r 3] [--ngl 99]`."""

import argparse
import statistics
import time

import llama_cpp as L
import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("-p", type=int, default=512)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("-r", type=int, default=3)
    ap.add_argument("--ngl", type=int, default=99)
    a = ap.parse_args()
    L.llama_backend_init()
    mp = L.llama_model_default_params()
    mp.n_gpu_layers = a.ngl
    model = L.llama_model_load_from_file(a.model.encode(), mp)
    cp = L.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch = a.p + a.n + 64, 512, 512
    cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_ENABLED
    ctx = L.llama_init_from_model(model, cp)
    mem = L.llama_get_memory(ctx)
    n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))
    batch = L.llama_batch_init(512, 0, 1)
    rng = np.random.default_rng(0)

    def run(ids, one_at_a_time):
        L.llama_memory_clear(mem, True)
        chunks = [[t] for t in ids] if one_at_a_time else [ids]
        t0, p0 = time.perf_counter(), 0
        for chunk in chunks:
            for i, t in enumerate(chunk):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = t, p0 + i, 1
                batch.seq_id[i][0], batch.logits[i] = 0, i == len(chunk) - 1
            batch.n_tokens = len(chunk)
            assert L.llama_decode(ctx, batch) == 0
            L.llama_synchronize(ctx)
            p0 += len(chunk)
        return time.perf_counter() - t0

    ids = rng.integers(10, n_vocab, max(a.p, a.n)).tolist()
    run(ids[:32], False)
    for name, n, single in (("pp", a.p, False), ("tg", a.n, True)):
        speeds = [n / run(ids[:n], single) for _ in range(a.r)]
        print(f"llama.cpp {name}{n}: {statistics.fmean(speeds):.2f} ± "
              f"{statistics.stdev(speeds):.2f} t/s")


if __name__ == "__main__":
    main()
