"""Stop 21: `impdiff ...` with extra defines in every i8 GEMV build, from $I8_DEFINES
("ASYNC_STAGE=0,MIN_BLOCKS=1"): an A/B of a kernel variant in one tree."""
import os
import sys

from impdiff.cli import main
from impdiff.kernels import mma_gemv

build_args = mma_gemv.build_args
extra = dict(kv.split("=") for kv in os.environ.get("I8_DEFINES", "").split(",") if kv)


def with_extra(*args, **kwargs):
    source, arch, defines = build_args(*args, **kwargs)
    return source, arch, {**defines, **{k: int(v) for k, v in extra.items()}}


mma_gemv.build_args = with_extra
sys.argv[0] = "impdiff"
main()
