"""Stop 18: 48 greedy tokens of a model through the CUDA graphs, as JSON (to compare two trees)."""
import json, sys
from impdiff.engine.fast import FastSession, load_fast_model
toks = FastSession(load_fast_model(sys.argv[1], "cuda", max_ctx=512)).generate_greedy([1, 2, 3, 4], 48)
json.dump(toks, open(sys.argv[2], "w"))
print(toks[:16])
