import sys, os, subprocess, re, collections
sys.path.insert(0, __import__("os").path.dirname(__file__)); import packed_fp16_gemv_experiment as q
from impdiff.kernels import compile_check as cc
bn, lanes, warps = map(int, sys.argv[1:4])
k = cc._compile(q._qgemvh_kernel, ["*fp32", "*fp32", "*i32", "*i32", "i32", "i32", "i32", "i32"],
                dict(G=32, BLOCK_N=bn, NT=32 * warps // lanes, L=lanes), num_warps=warps)
open("/tmp/kh.cubin", "wb").write(k.asm["cubin"])
nvd = os.path.join(os.path.dirname(q.triton.__file__), "backends/nvidia/bin/nvdisasm")
sass = subprocess.run([nvd, "-c", "/tmp/kh.cubin"], capture_output=True, text=True).stdout
open("/tmp/kh.sass", "w").write(sass)
lines = [l for l in sass.splitlines() if re.match(r"\s+/\*[0-9a-f]+\*/", l)]
addr = lambda l: int(re.match(r"\s+/\*([0-9a-f]+)\*/", l).group(1), 16)
loops = []
for l in lines:
    lab = re.search(r"BRA `\((\.L_x_\d+)\)", l)
    if lab:
        idx = sass.find(lab.group(1) + ":")
        for a in sass[idx:].splitlines()[1:3]:
            mm = re.match(r"\s+/\*([0-9a-f]+)\*/", a)
            if mm: tgt = int(mm.group(1), 16); break
        if tgt < addr(l): loops.append((tgt, addr(l)))
a, b = max(loops, key=lambda p: p[1] - p[0])
body = [l for l in lines if a <= addr(l) <= b]
ops = collections.Counter(re.search(r"\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", l).group(1) for l in body)
print("loop instrs", len(body), sorted(ops.items(), key=lambda x: -x[1]))
ru = subprocess.run([os.path.join(os.path.dirname(nvd), "cuobjdump"), "--dump-resource-usage", "/tmp/kh.cubin"], capture_output=True, text=True).stdout
vals = bn * 32 // lanes * 8
print(re.search(r"REG:\d+", ru).group(0), "values/thread/iter", vals, "SASS per value %.2f" % (len(body) / vals))
