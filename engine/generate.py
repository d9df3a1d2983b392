"""Prefill in chunks, decode one token at a time, sample."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from .model import KVCache, TapFn, Transformer


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: no top-k cut
    top_p: float = 1.0
    seed: int = 0


class Session:
    """One sequence: the model, its KV cache and the next position."""

    def __init__(self, model: Transformer, n_ctx: int = 4096, n_ubatch: int = 512):
        self.model = model
        self.n_ubatch = n_ubatch
        self.cache = KVCache(model.cfg, n_ctx, model.device)
        self.pos = 0

    def reset(self) -> None:
        self.pos = 0

    @torch.inference_mode()
    def eval(self, token_ids: Sequence[int], tap: TapFn | None = None,
             all_logits: bool = True) -> torch.Tensor:
        """Feed tokens at the next positions, in ubatches; logits [T, vocab] (or [1, vocab])."""
        if self.pos + len(token_ids) > self.cache.max_ctx:
            raise ValueError(f"context full: {self.pos} + {len(token_ids)} tokens > n_ctx "
                             f"{self.cache.max_ctx}")
        ids = torch.tensor(list(token_ids), dtype=torch.long, device=self.model.device)
        out = []
        for lo in range(0, len(ids), self.n_ubatch):
            chunk = ids[lo:lo + self.n_ubatch]
            out.append(self.model.forward(chunk, self.pos, self.cache, tap, all_logits))
            self.pos += len(chunk)
        return torch.cat(out) if all_logits else out[-1]


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    if params.temperature <= 0:
        return int(torch.argmax(logits))
    logits = logits.float() / params.temperature
    if params.top_k > 0:
        kth = torch.topk(logits, min(params.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, -1)
    if params.top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        drop = sorted_p.cumsum(-1) - sorted_p >= params.top_p
        sorted_p[drop] = 0.0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_p)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


def generate(session: Session, prompt_ids: Sequence[int], max_new_tokens: int,
             params: SamplingParams = SamplingParams(), stop_ids: frozenset[int] = frozenset()
             ) -> Iterator[int]:
    """Yield generated ids; stops at a stop id (not yielded) or after max_new_tokens."""
    generator = torch.Generator().manual_seed(params.seed)
    logits = session.eval(prompt_ids, all_logits=False)[-1]
    for _ in range(max_new_tokens):
        token = sample(logits, params, generator)
        if token in stop_ids:
            return
        yield token
        logits = session.eval([token], all_logits=False)[-1]
