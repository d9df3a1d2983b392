"""Stop 22: the logits where two trees' greedy tokens part, as generate_greedy reaches them (the
prompt [1, 2, 3, 4] in one chunk, then one token at a time through the CUDA graphs): the top
two and their gap relative to the largest |logit|, after the tokens of TOKENS.json before STEP.

    python margin.py MODEL TOKENS.json STEP
"""
import json
import sys

import torch

from impdiff.engine.fast import FastSession, load_fast_model

model, tokens, step = sys.argv[1], json.load(open(sys.argv[2])), int(sys.argv[3])
session = FastSession(load_fast_model(model, "cuda", max_ctx=512))
logits = session.eval([1, 2, 3, 4], last_only=True)[-1]
for t in tokens[:step]:
    logits = session.eval([t], last_only=True)[-1]
top = torch.topk(logits.float(), 2)
gap = (top.values[0] - top.values[1]).item() / logits.abs().max().item()
print(f"step {step}: top two {top.indices.tolist()} {top.values.tolist()}, gap {gap:.2e} of max")
