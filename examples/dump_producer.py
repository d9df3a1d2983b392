#!/usr/bin/env python3
"""An external engine that writes impdiff's tap-dump format (docs/dump-format.md).

A deliberately small, standalone llama forward in numpy: it reads an F32 llama GGUF (e.g. the
synthetic models of impdiff.testing.synthetic), runs the token ids chunk by chunk with a KV
cache, and writes every canonical tap of every chunk to a safetensors file plus a manifest.
It does NOT import impdiff: numpy, safetensors and gguf only, as any other engine would be.
Then

    impdiff diff --a dump:DIR --b llamacpp:MODEL.gguf

replays llama.cpp on the recorded token ids and says where this engine departs from it.
`--fault` plants a known bug to see that happen:

    skip-attn-norm@L        layer L's attention RMS norm multiplies by its weight only
    scale-attn-out@L=F      layer L's attention output projection is scaled by F

usage: dump_producer.py MODEL.gguf --out DIR [--tokens N] [--ids 1,2,3] [--chunk 32]
                        [--seed 0] [--fault NAME@L[=VALUE]] ...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import save_file

FORMAT, VERSION = "impdiff-tap-dump", 1
LAYOUTS = {  # canonical layout of each tap this producer writes
    "inp_embd": "hidden", "attn_norm": "hidden", "Qcur": "heads", "Kcur": "heads",
    "Vcur": "heads", "Qcur_pos": "heads", "Kcur_pos": "heads", "kqv": "heads",
    "kqv_out": "flat", "attn_out": "hidden", "ffn_inp": "hidden", "ffn_norm": "hidden",
    "ffn_gate": "flat", "ffn_up": "flat", "ffn_act": "flat", "ffn_out": "hidden",
    "l_out": "hidden", "result_norm": "hidden",
}


def read_gguf(path: str):
    reader = gguf.GGUFReader(path)

    def field(key, default=None):
        f = reader.fields.get(key)
        if f is None:
            return default
        value = f.parts[f.data[0]]
        if f.types[0] == gguf.GGUFValueType.STRING:
            return bytes(value).decode()
        return value.item() if value.size == 1 else value.tolist()

    arch = field("general.architecture")
    if arch != "llama":
        sys.exit(f"{path}: architecture {arch!r}; this example runs llama only")
    hp = {
        "n_layer": field(f"{arch}.block_count"), "n_embd": field(f"{arch}.embedding_length"),
        "n_head": field(f"{arch}.attention.head_count"),
        "n_head_kv": field(f"{arch}.attention.head_count_kv"),
        "eps": field(f"{arch}.attention.layer_norm_rms_epsilon"),
        "rope_base": field(f"{arch}.rope.freq_base", 10000.0),
    }
    hp["head_dim"] = field(f"{arch}.attention.key_length", hp["n_embd"] // hp["n_head"])
    hp["n_rot"] = field(f"{arch}.rope.dimension_count", hp["head_dim"])
    weights = {}
    for t in reader.tensors:
        if t.tensor_type != gguf.GGMLQuantizationType.F32:
            sys.exit(f"{path}: tensor {t.name} is {t.tensor_type.name}; this example reads F32")
        weights[t.name] = np.asarray(t.data, dtype=np.float64)  # numpy order [rows, cols]
    weights.setdefault("output.weight", weights["token_embd.weight"])
    hp["n_vocab"] = weights["token_embd.weight"].shape[0]
    return hp, weights


def rms_norm(x, w, eps, skip=False):
    return x * w if skip else x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def rope(x, pos, n_rot, base):
    """GGUF llama order: rotate adjacent pairs (2i, 2i+1) of the first n_rot dims."""
    inv = base ** (-np.arange(0, n_rot, 2) / n_rot)
    theta = pos[:, None] * inv[None, :]
    c, s = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
    out = x.copy()
    x1, x2 = x[..., 0:n_rot:2], x[..., 1:n_rot:2]
    out[..., 0:n_rot:2] = x1 * c - x2 * s
    out[..., 1:n_rot:2] = x1 * s + x2 * c
    return out


class Llama:
    def __init__(self, hp, weights, faults):
        self.hp, self.w, self.faults = hp, weights, faults
        empty = np.zeros((0, hp["n_head_kv"], hp["head_dim"]))
        self.k_cache = [empty] * hp["n_layer"]
        self.v_cache = [empty] * hp["n_layer"]

    def fault(self, name, layer):
        return self.faults.get((name, layer))

    def forward(self, ids, start):
        hp, w = self.hp, self.w
        T, H, Hkv, D = len(ids), hp["n_head"], hp["n_head_kv"], hp["head_dim"]
        pos = np.arange(start, start + T, dtype=np.float64)
        taps = {}
        x = w["token_embd.weight"][ids]
        taps["inp_embd"] = x
        for i in range(hp["n_layer"]):
            p = f"blk.{i}."
            h = rms_norm(x, w[p + "attn_norm.weight"], hp["eps"],
                         skip=self.fault("skip-attn-norm", i) is not None)
            taps[f"attn_norm.{i}"] = h
            q = (h @ w[p + "attn_q.weight"].T).reshape(T, H, D)
            k = (h @ w[p + "attn_k.weight"].T).reshape(T, Hkv, D)
            v = (h @ w[p + "attn_v.weight"].T).reshape(T, Hkv, D)
            taps[f"Qcur.{i}"], taps[f"Kcur.{i}"], taps[f"Vcur.{i}"] = q, k, v
            q = rope(q, pos, hp["n_rot"], hp["rope_base"])
            k = rope(k, pos, hp["n_rot"], hp["rope_base"])
            taps[f"Qcur_pos.{i}"], taps[f"Kcur_pos.{i}"] = q, k
            self.k_cache[i] = np.concatenate([self.k_cache[i], k])
            self.v_cache[i] = np.concatenate([self.v_cache[i], v])
            ks = np.repeat(self.k_cache[i], H // Hkv, axis=1)
            vs = np.repeat(self.v_cache[i], H // Hkv, axis=1)
            scores = np.einsum("thd,shd->hts", q, ks) / np.sqrt(D)
            k_pos = np.arange(ks.shape[0])
            scores = np.where(k_pos[None, None, :] <= pos[None, :, None], scores, -np.inf)
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            att = np.einsum("hts,shd->thd", scores / scores.sum(-1, keepdims=True), vs)
            taps[f"kqv.{i}"] = att
            taps[f"kqv_out.{i}"] = att.reshape(T, H * D)
            a = att.reshape(T, H * D) @ w[p + "attn_output.weight"].T
            scale = self.fault("scale-attn-out", i)
            if scale is not None:
                a = a * scale
            taps[f"attn_out.{i}"] = a
            x = x + a
            taps[f"ffn_inp.{i}"] = x
            h = rms_norm(x, w[p + "ffn_norm.weight"], hp["eps"])
            taps[f"ffn_norm.{i}"] = h
            gate, up = h @ w[p + "ffn_gate.weight"].T, h @ w[p + "ffn_up.weight"].T
            taps[f"ffn_gate.{i}"], taps[f"ffn_up.{i}"] = gate, up
            act = gate / (1.0 + np.exp(-gate)) * up
            taps[f"ffn_act.{i}"] = act
            f = act @ w[p + "ffn_down.weight"].T
            taps[f"ffn_out.{i}"] = f
            x = x + f
            taps[f"l_out.{i}"] = x
        h = rms_norm(x, w["output_norm.weight"], hp["eps"])
        taps["result_norm"] = h
        taps["logits"] = h @ w["output.weight"].T
        return taps


def parse_fault(text):
    name, _, rest = text.partition("@")
    layer, _, value = rest.partition("=")
    if name not in ("skip-attn-norm", "scale-attn-out") or not layer.isdigit():
        raise argparse.ArgumentTypeError(f"--fault {text}: expected skip-attn-norm@L or "
                                         "scale-attn-out@L=F")
    return (name, int(layer)), float(value) if value else 1.0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--out", required=True)
    ap.add_argument("--tokens", type=int, default=64, help="N seeded random token ids")
    ap.add_argument("--ids", help="comma-separated token ids instead of --tokens")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chunk", type=int, default=32)
    ap.add_argument("--fault", type=parse_fault, action="append", default=[])
    args = ap.parse_args(argv)

    hp, weights = read_gguf(args.model)
    # a fault on a layer the model lacks would plant nothing, and the dump would look clean
    missing = [f"{n}@{l}" for (n, l), _ in args.fault if l >= hp["n_layer"]]
    if missing:
        ap.error(f"--fault {missing[0]}: {args.model} has layers 0..{hp['n_layer'] - 1}")
    ids = ([int(t) for t in args.ids.split(",")] if args.ids else
           np.random.default_rng(args.seed).integers(0, hp["n_vocab"], args.tokens).tolist())
    model = Llama(hp, weights, dict(args.fault))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    chunks = []
    for lo in range(0, len(ids), args.chunk):
        part = ids[lo:lo + args.chunk]
        taps = model.forward(np.array(part), lo)
        name = f"chunk-{len(chunks):05d}.safetensors"
        save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in taps.items()},
                  str(out / name))
        chunks.append({"file": name, "start": lo, "token_ids": part,
                       "positions": list(range(lo, lo + len(part)))})
    manifest = {
        "format": FORMAT, "version": VERSION,
        "producer": {"name": "examples/dump_producer.py", "version": "1",
                     "build": f"numpy {np.__version__}, float64 compute",
                     "faults": [f"{n}@{l}" + (f"={v}" if n == "scale-attn-out" else "")
                                for (n, l), v in args.fault]},
        "model": {"path": str(Path(args.model).resolve()), "arch": "llama",
                  "n_layer": hp["n_layer"], "n_vocab": hp["n_vocab"]},
        "layouts": LAYOUTS,
        "chunks": chunks,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"wrote {len(ids)} positions in {len(chunks)} chunks to {out}/")


if __name__ == "__main__":
    main()
