"""Stop 21: `impdiff ...` with every i8 GEMV built under __launch_bounds__(threads, 1) (what h2
ran by mistake: ptxas then takes more registers, 80 -> 128 at 8 warps), to time it against the
bare bound."""
import sys

from impdiff.cli import main
from impdiff.kernels import mma_gemv

build_args = mma_gemv.build_args


def min_one(*args, **kwargs):
    source, arch, defines = build_args(*args, **kwargs)
    return source, arch, {"MIN_BLOCKS": 1, **defines}


mma_gemv.build_args = min_one
sys.argv[0] = "impdiff"
main()
