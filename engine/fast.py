"""The fast path: the reference Transformer's forward on the kernels of `impdiff.kernels`.

Same model, same tap names, different execution:

* weights stay quantised on the GPU in the kernels' plane layout (`engine.packed`); Q/K/V and
  gate/up are fused into one weight where their formats agree;
* one token runs fused dequantise-GEMVs in float32; more tokens dequantise to fp16 for cuBLAS;
* norms are fused with the residual add around them, the gated activation is the epilogue of the
  gate/up GEMV, RoPE writes K straight into a static fp16 KV cache, attention is one flash
  kernel whose key range comes from device-side positions;
* greedy decode is a CUDA graph captured once and replayed per token: the next token is picked
  on the GPU and fed back without the host (`FastSession.generate_greedy`).

With a tap function every op runs unfused and each tap sees (and may replace) the tensor the
reference would show at that point. Architectures: llama, qwen3, gemma3 (dense, own KV per
layer); the rest run on the reference `Transformer`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from itertools import accumulate

import torch

from ..kernels.activation import gated_activation
from ..kernels.attention import attention, decode_splits
from ..kernels.launch import fused, fusions
from ..kernels.norm_rope import residual_norm, rope, rope_qkv
from ..kernels.quant_matmul import (PackedWeight, RopeAfter, concat_rows, qgemv, qgemv_gated,
                                    qgemv_rope, qmatmul, rope_epilogues)
from .config import ModelConfig
from .errors import ModelLoadError
from .gguf_file import GGUFFile
from .model import GLOBAL, TapFn, emit, ffn_activation, rope_angles, softcap
from .packed import pack_gguf
from .quants import dequantize

def unsupported_reason(cfg: ModelConfig) -> str | None:
    spec = cfg.spec
    if spec.moe or spec.v_norm or cfg.n_embd_per_layer:
        return f"architecture '{cfg.arch}' (experts, V norm or per-layer embeddings)"
    if any(layer.kv_layer != i for i, layer in enumerate(cfg.layers)):
        return "KV-shared layers"
    return None


@dataclass
class FastLayer:
    attn_norm: torch.Tensor
    qkv: list[PackedWeight]  # q, k, v, neighbours of one format fused
    wo: PackedWeight
    ffn_norm: torch.Tensor
    gate_up: list[PackedWeight]  # [gate | up] fused where their formats agree
    down: PackedWeight
    q_norm: torch.Tensor | None = None
    k_norm: torch.Tensor | None = None
    attn_post_norm: torch.Tensor | None = None
    ffn_post_norm: torch.Tensor | None = None


def _fuse(weights: list[PackedWeight]) -> list[PackedWeight]:
    """Runs of neighbouring weights of one format, width and scale as one weight each (Q and K
    fuse where V has another type, as in Q4_K_M's Q6_K layers)."""
    runs: list[list[PackedWeight]] = []
    for w in weights:
        last = runs[-1][-1] if runs else None
        if last is not None and (w.fmt, w.k, w.alpha) == (last.fmt, last.k, last.alpha):
            runs[-1].append(w)
        else:
            runs.append([w])
    return [concat_rows(run) if len(run) > 1 else run[0] for run in runs]


class FastTransformer:
    def __init__(self, cfg: ModelConfig, gf: GGUFFile, device: torch.device, max_ctx: int):
        fusions()  # a bad IMPDIFF_FUSIONS stops here, not in the middle of a step
        reason = unsupported_reason(cfg)
        if reason:
            raise ModelLoadError(f"{gf.path}: the fast path does not run {reason}; use the "
                                 "reference engine")
        self.cfg, self.device, self.max_ctx = cfg, device, max_ctx
        t = gf.tensors

        def dense(name: str) -> torch.Tensor:
            raw = t[name]
            return dequantize(raw.data, raw.qtype, raw.shape).to(device, torch.float32)

        def packed(name: str) -> PackedWeight:
            raw = t[name]
            return pack_gguf(raw.data, raw.qtype, raw.shape, device)

        def optional(name: str) -> torch.Tensor | None:
            return dense(name) if name in t else None

        self.tok_embd = dense("token_embd.weight")
        self.output = packed("output.weight" if "output.weight" in t else "token_embd.weight")
        self.output_norm = dense("output_norm.weight")
        self.layers = []
        for i in range(cfg.n_layer):
            p = f"blk.{i}."
            self.layers.append(FastLayer(
                attn_norm=dense(p + "attn_norm.weight"),
                qkv=_fuse([packed(p + f"attn_{x}.weight") for x in "qkv"]),
                wo=packed(p + "attn_output.weight"), ffn_norm=dense(p + "ffn_norm.weight"),
                gate_up=_fuse([packed(p + "ffn_gate.weight"), packed(p + "ffn_up.weight")]),
                down=packed(p + "ffn_down.weight"), q_norm=optional(p + "attn_q_norm.weight"),
                k_norm=optional(p + "attn_k_norm.weight"),
                attn_post_norm=optional(p + "post_attention_norm.weight"),
                ffn_post_norm=optional(p + "post_ffw_norm.weight")))
        # cos/sin per distinct rope of the layers, from the reference's float64 angles
        positions = torch.arange(max_ctx, device=device)
        freqs = optional("rope_freqs.weight")
        self.rope_tables = {}
        for L in cfg.layers:
            key = self._rope_key(L)
            if key not in self.rope_tables:
                self.rope_tables[key] = rope_angles(positions, *key[:3],
                                                    freqs if L.rope_freqs else None)
        self.k_cache = [torch.zeros(max_ctx, L.n_head_kv, L.head_dim, device=device,
                                    dtype=torch.float16) for L in cfg.layers]
        self.v_cache = [torch.zeros_like(k) for k in self.k_cache]
        # a one-token step splits the key range only where contexts are long enough to need it
        # (the merge of the splits costs more than it saves on a short cache)
        self.splits = {L.n_head_kv: min(decode_splits(L.n_head_kv, device), max(1, max_ctx // 1024))
                       for L in cfg.layers}

    @staticmethod
    def _rope_key(L) -> tuple:
        return L.n_rot, L.rope_base, L.rope_freq_scale, L.rope_freqs

    # -- forward ------------------------------------------------------------------------------

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, tap: TapFn | None = None,
                last_only: bool = False) -> torch.Tensor:
        """Logits [T, vocab] (or [1, vocab]) for `tokens` at `positions` (int32, consecutive).

        Everything stays on the device and reads no value back, so a one-token call can be
        captured in a CUDA graph.
        """
        cfg = self.cfg
        x = emit(tap, "inp_embd", GLOBAL, self.tok_embd[tokens])
        if cfg.spec.embed_scale:
            x = emit(tap, "inp_scaled", GLOBAL, x * math.sqrt(cfg.n_embd))
        _, h = residual_norm(x, self.layers[0].attn_norm, cfg.rms_eps)
        h = emit(tap, "attn_norm", 0, h)
        for i, w in enumerate(self.layers):
            a = self.attention(i, h, positions, tap)
            a = emit(tap, "attn_out", i, qmatmul(a, w.wo))
            x, h = self.residual(x, a, w.attn_post_norm, w.ffn_norm, tap,
                                 (("attn_post_norm", i), ("ffn_inp", i), ("ffn_norm", i)))
            f = self.mlp(i, h, tap)
            last = i == cfg.n_layer - 1
            norm = self.output_norm if last else self.layers[i + 1].attn_norm
            x, h = self.residual(x, f, w.ffn_post_norm, norm, tap,
                                 (("ffn_post_norm", i), ("l_out", i),
                                  ("result_norm", GLOBAL) if last else ("attn_norm", i + 1)))
        if last_only:
            h = h[-1:]
        logits = qmatmul(h, self.output)
        if cfg.final_logit_softcap:
            logits = softcap(logits, cfg.final_logit_softcap)
        return emit(tap, "result_output", GLOBAL, logits)

    def residual(self, x, h, post_norm, norm, tap, names):
        """x + post_norm(h), and its norm: one kernel, or three steps that each show a tap."""
        eps = self.cfg.rms_eps
        if tap is None:
            return residual_norm(x, norm, eps, h, post_norm)
        (post_name, i), (sum_name, j), (norm_name, k) = names
        if post_norm is not None:
            h = emit(tap, post_name, i, residual_norm(h, post_norm, eps)[1])
        x = emit(tap, sum_name, j, x + h)
        return x, emit(tap, norm_name, k, residual_norm(x, norm, eps)[1])

    def attention(self, i: int, h: torch.Tensor, positions: torch.Tensor,
                  tap: TapFn | None) -> torch.Tensor:
        cfg, L, w = self.cfg, self.cfg.layers[i], self.layers[i]
        T, d = h.shape[0], L.head_dim
        cos, sin = self.rope_tables[self._rope_key(L)]
        neox = cfg.spec.rope_neox
        # one token, "rope" fusion: rotated, and the caches written, by the GEMVs themselves
        q = self._qkv_rope_in_gemv(i, h, positions, cos, sin) if tap is None else None
        if q is None:
            qkv = _project(h, w.qkv).view(T, L.n_head + 2 * L.n_head_kv, d)
            if tap is None:  # norms, rotations and both cache writes in one kernel
                q = rope_qkv(qkv, L.n_head, L.n_head_kv, cos, sin, positions, L.n_rot, neox,
                             self.k_cache[i], self.v_cache[i], w.q_norm, w.k_norm, cfg.rms_eps)
            else:
                q = self._qkv_taps(i, qkv, positions, cos, sin, tap)
        window = cfg.sliding_window if L.swa else 0
        splits = self.splits[L.n_head_kv] if T == 1 else 1
        out = emit(tap, "kqv", i, attention(q, self.k_cache[i], self.v_cache[i], positions,
                                             cfg.attn_scale, window, 0.0, splits))
        return emit(tap, "kqv_out", i, out.reshape(T, L.n_head * d))

    def _qkv_taps(self, i: int, qkv: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor,
                  sin: torch.Tensor, tap: TapFn) -> torch.Tensor:
        """Q/K norms, rotations and cache writes one step at a time, each showing its tap."""
        cfg, L, w = self.cfg, self.cfg.layers[i], self.layers[i]
        neox = cfg.spec.rope_neox
        q, k, v = qkv.split([L.n_head, L.n_head_kv, L.n_head_kv], dim=1)
        q, k, v = (emit(tap, name, i, t) for name, t in (("Qcur", q), ("Kcur", k),
                                                         ("Vcur", v)))
        if w.q_norm is not None:
            q = emit(tap, "Qcur_normed", i, residual_norm(q, w.q_norm, cfg.rms_eps)[1])
            k = emit(tap, "Kcur_normed", i, residual_norm(k, w.k_norm, cfg.rms_eps)[1])
        q = emit(tap, "Qcur_pos", i, rope(q, cos, sin, positions, L.n_rot, neox))
        k = emit(tap, "Kcur_pos", i, rope(k, cos, sin, positions, L.n_rot, neox))
        for t, cache in ((k, self.k_cache[i]), (v, self.v_cache[i])):
            rope(t, cos, sin, positions, 0, neox, out=cache)  # n_rot 0: a copy into rows
        return q

    def _qkv_rope_in_gemv(self, i: int, h: torch.Tensor, positions: torch.Tensor,
                          cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor | None:
        """One token's Q [1, n_head, head_dim], with the "rope" fusion where every QKV product
        runs on the i8 kernel (and no Q/K norm, llama's pairs): the GEMVs rotate Q and K and
        write K and V into the caches. None where they cannot."""
        cfg, L, w = self.cfg, self.cfg.layers[i], self.layers[i]
        if h.shape[0] != 1 or not fused("rope") or w.q_norm is not None or cfg.spec.rope_neox:
            return None
        x = h.reshape(-1)
        d = L.head_dim
        q = torch.empty(1, L.n_head, d, device=self.device, dtype=torch.float32)
        parts = rope_epilogues(x, w.qkv, RopeAfter(positions, cos, sin, q, self.k_cache[i],
                                                   self.v_cache[i], L.n_head * d,
                                                   L.n_head_kv * d, d, L.n_rot))
        if parts is None:
            return None
        _side_by_side(self.device, [functools.partial(qgemv_rope, x, weight, rope)
                                    for weight, rope in zip(w.qkv, parts)])
        return q

    def mlp(self, i: int, h: torch.Tensor, tap: TapFn | None) -> torch.Tensor:
        w, act = self.layers[i], self.cfg.spec.ffn_act
        if tap is None and h.shape[0] == 1 and len(w.gate_up) == 1:
            a = qgemv_gated(h[0], w.gate_up[0], act)[None]  # the activation in its epilogue
            return qmatmul(a, w.down)
        gate, up = _project(h, w.gate_up).chunk(2, dim=-1)
        if tap is None:
            return qmatmul(gated_activation(act, gate, up), w.down)
        gate, up = emit(tap, "ffn_gate", i, gate), emit(tap, "ffn_up", i, up)
        a = emit(tap, "ffn_act", i, ffn_activation(act, gate) * up)
        return emit(tap, "ffn_out", i, qmatmul(a, w.down))


def _project(h: torch.Tensor, weights: list[PackedWeight]) -> torch.Tensor:
    """h times each weight, outputs side by side (one token: written in place, no concat)."""
    if len(weights) == 1:
        return qmatmul(h, weights[0])
    if h.shape[0] > 1:
        return torch.cat([qmatmul(h, w) for w in weights], dim=-1)
    out = torch.empty(1, sum(w.n for w in weights), device=h.device, dtype=torch.float32)
    x, ends = h.reshape(-1), accumulate(w.n for w in weights)
    _side_by_side(h.device, [functools.partial(qgemv, x, w, out=out[0, end - w.n:end])
                             for w, end in zip(weights, ends)])
    return out


def _side_by_side(device: torch.device, calls: list) -> None:
    """Each call; on CUDA with the "branches" fusion (kernels/launch.py), all but the first
    on side streams forked from the current one and joined back (in a CUDA graph: parallel
    branches), so that a small product (V: 5 us on the decode path, its grid a quarter of
    the SMs) runs beside a large one instead of after it."""
    if device.type != "cuda" or not fused("branches"):
        for call in calls:
            call()
        return
    main = torch.cuda.current_stream(device)
    sides = [_side_stream(device, i) for i in range(len(calls) - 1)]
    for side, call in zip(sides, calls[1:]):
        side.wait_stream(main)
        with torch.cuda.stream(side):
            call()
    calls[0]()
    for side in sides:
        main.wait_stream(side)


@functools.cache
def _side_stream(device: torch.device, i: int) -> torch.cuda.Stream:
    return torch.cuda.Stream(device)


@dataclass
class _Captured:
    """A forward of T tokens captured as a CUDA graph, with the buffers it reads and writes."""

    tokens: torch.Tensor
    positions: torch.Tensor
    graph: torch.cuda.CUDAGraph | None = None
    logits: torch.Tensor | None = None
    recorder: object | None = None  # what a recording tap's forward wrote, for its `collect`


class FastSession:
    """One sequence on the fast path. One-token steps and full ubatches replay CUDA graphs
    (captured on first use); other chunk lengths run eagerly. A tap runs in the graphs too if
    it can record (`recorder()` gives a tap whose work is all on the device, `collect(recorder,
    chunk_end)` takes each replay's results: `impdiff.tap_stats.GpuTapStats`); any other tap
    runs eagerly."""

    def __init__(self, model: FastTransformer, n_ubatch: int = 512):
        self.model, self.n_ubatch, self.pos = model, n_ubatch, 0
        self._graphs: dict[tuple[int, bool, bool], _Captured] = {}  # n, last_only, recorded
        self._step_buffers = self._buffers(1, True)  # greedy decode feeds its token here

    def _buffers(self, n: int, last_only: bool, recorded: bool = False) -> _Captured:
        key = (n, last_only, recorded)
        if key not in self._graphs:
            dev = self.model.device
            self._graphs[key] = _Captured(torch.zeros(n, dtype=torch.long, device=dev),
                                          torch.zeros(n, dtype=torch.int32, device=dev))
        return self._graphs[key]

    def reset(self) -> None:
        self.pos = 0

    @torch.inference_mode()
    def eval(self, token_ids, tap: TapFn | None = None, last_only: bool = False) -> torch.Tensor:
        n = len(token_ids)
        if self.pos + n > self.model.max_ctx:
            raise ValueError(f"context full: {self.pos} + {n} tokens > n_ctx {self.model.max_ctx}")
        ids = torch.as_tensor(list(token_ids), dtype=torch.long, device=self.model.device)
        out = []
        for lo in range(0, n, self.n_ubatch):
            chunk = ids[lo:lo + self.n_ubatch]
            last = last_only and lo + len(chunk) == n
            recorded = tap is not None and hasattr(tap, "recorder")
            if (tap is None or recorded) and len(chunk) in (1, self.n_ubatch):
                buffers = self._buffers(len(chunk), last, recorded)
                buffers.tokens.copy_(chunk)
                buffers.positions.copy_(torch.arange(self.pos, self.pos + len(chunk),
                                                     dtype=torch.int32))
                out.append(self._replay(buffers, last, tap).clone())
            else:
                pos = torch.arange(self.pos, self.pos + len(chunk), dtype=torch.int32,
                                   device=self.model.device)
                out.append(self.model.forward(chunk, pos, tap, last))
            self.pos += len(chunk)
        return out[-1] if last_only else torch.cat(out)

    def _replay(self, c: _Captured, last_only: bool, tap=None) -> torch.Tensor:
        """The graph's logits for what its buffers hold (eager off CUDA); a recording tap then
        collects what this forward's taps computed."""

        def forward(recorder):
            logits = self.model.forward(c.tokens, c.positions, recorder, last_only)
            if recorder is not None:
                recorder.finish()
            return logits

        def new_recorder():
            return tap.recorder() if tap is not None else None

        if self.model.device.type != "cuda":
            recorder = new_recorder()
            logits = forward(recorder)
        else:
            if c.graph is None:
                stream = torch.cuda.Stream()
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):  # compile and warm every kernel before capture
                    for _ in range(2):
                        forward(new_recorder())
                torch.cuda.current_stream().wait_stream(stream)
                c.graph, c.recorder = torch.cuda.CUDAGraph(), new_recorder()
                with torch.cuda.graph(c.graph):
                    c.logits = forward(c.recorder)
            c.graph.replay()
            logits, recorder = c.logits, c.recorder
        if tap is not None:
            tap.collect(recorder, self.pos + len(c.tokens))
        return logits

    @torch.inference_mode()
    def generate_greedy(self, prompt_ids, n: int) -> list[int]:
        """n greedy tokens after the prompt; one host sync at the end."""
        logits = self.eval(prompt_ids, last_only=True)
        step = self._step_buffers
        out = torch.empty(n, dtype=torch.long, device=self.model.device)
        step.tokens.copy_(logits[-1].argmax().view(1))
        for i in range(n):
            out[i:i + 1].copy_(step.tokens)
            if i == n - 1:
                break
            step.positions.fill_(self.pos)  # a host int: no read back from the device
            self.pos += 1
            step.tokens.copy_(self._replay(step, True)[-1].argmax().view(1))
        return out.tolist()


def load_fast_model(path, device: str | torch.device = "cuda", max_ctx: int = 4096
                    ) -> FastTransformer:
    from .config import config_from_gguf

    gf = GGUFFile(path)
    return FastTransformer(config_from_gguf(gf), gf, torch.device(device), max_ctx)
