"""Stop 17 e14: PDL on vs off gives the same greedy tokens and logits through the CUDA graphs."""
import os, sys, hashlib
from impdiff.engine.fast import FastSession, load_fast_model
model = load_fast_model(sys.argv[1], "cuda", max_ctx=512)
res = {}
for pdl in ("0", "1"):
    os.environ["IMPDIFF_PDL"] = pdl
    session = FastSession(model)
    toks = session.generate_greedy([1, 2, 3, 4], 48)
    res[pdl] = toks
    print(f"PDL={pdl}: tokens {hashlib.sha1(str(toks).encode()).hexdigest()[:12]} {toks[:12]}", flush=True)
print("identical" if res["0"] == res["1"] else "DIFFERENT")
