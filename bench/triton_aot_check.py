"""Compile every Triton kernel variant for a CUDA target without a GPU (ahead of time).

    python bench/triton_aot_check.py [--arch 90] [--quick | --smoke]

The interpreter (TRITON_INTERPRET=1) runs kernels as numpy and accepts code that the
real compiler rejects; this script runs the real pipeline (Triton IR -> LLVM -> PTX ->
cubin with the ptxas shipped in the triton wheel) for each kernel, for float32 and
float64, each activation and the optional-argument flags, so that a GPU run does not
die on a compile error.  Prints one line per variant and exits non-zero on any failure.
"""

import argparse
import itertools
import os
import sys
import time

os.environ.pop("TRITON_INTERPRET", None)  # the real compiler, not the interpreter
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from mumo_fast.kernels import epilogue, linear, lowrank, norm, update  # noqa: E402


def is_ptr(name):
    return name.endswith("_ptr") or (len(name) == 2 and name[0] in "pgo" and name[1].isdigit())


def compile_variant(kernel, dtype, const, arch, num_warps=4):
    fn = kernel
    sig, constexprs = {}, {}
    for name in fn.arg_names:
        if name in const:
            sig[name] = "constexpr"
            constexprs[name] = const[name]
        elif is_ptr(name):
            sig[name] = "*" + dtype
        else:
            sig[name] = "i32"
    src = ASTSource(fn=fn, signature=sig, constexprs=constexprs)
    target = GPUTarget("cuda", arch, 32)
    return triton.compile(src, target=target, options={"num_warps": num_warps})


def variants(quick):
    acc = {"fp32": tl.float32, "fp64": tl.float64}
    acts = (0, 2) if quick else (0, 1, 2, 3)
    for dt in ("fp32", "fp64"):
        dot = dt == "fp32"
        bm, bn, bk = (16, 64, 32) if dot else (16, 32, 8)
        for act, flags in itertools.product(acts, ((1, 1, 1), (0, 0, 0))):
            hb, hg, he = map(bool, flags)
            common = {"HAS_BIAS": hb, "HAS_GAMMA": hg, "HAS_BETA": he, "ACT": act,
                      "USE_DOT": dot, "INPUT_PRECISION": "ieee", "ACC_DTYPE": acc[dt]}  # fmt: skip
            yield ("linear", linear.film_linear_fwd_kernel, dt,
                   {**common, "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk})  # fmt: skip
            for br in (16, 32) if dot else (1, 8, 32):
                yield ("lowrank", lowrank.film_linear_lowrank_fwd_kernel, dt,
                       {**common, "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "BLOCK_R": br})  # fmt: skip
            yield ("epilogue_fwd", epilogue.film_epilogue_fwd_kernel, dt,
                   {"HAS_BIAS": hb, "HAS_GAMMA": hg, "HAS_BETA": he, "ACT": act,
                    "ACC_DTYPE": acc[dt], "BLOCK": 1024})  # fmt: skip
            for bnn, bc, bs in ((16, 128, 1), (16, 1, 256), (32, 16, 4), (128, 1, 1)):
                yield ("epilogue_bwd", epilogue.film_epilogue_bwd_kernel, dt,
                       {"HAS_GAMMA": hg, "ACT": act, "ACC_DTYPE": acc[dt], "BLOCK_N": bnn,
                        "BLOCK_C": bc, "BLOCK_S": bs})  # fmt: skip
                yield ("bn_fwd", norm.bn_fwd_kernel, dt,
                       {"HAS_W": hb, "HAS_B": hb, "HAS_GAMMA": hg, "HAS_BETA": he, "ACT": act,
                        "ACC_DTYPE": acc[dt], "BLOCK_N": bnn, "BLOCK_C": bc, "BLOCK_S": bs})  # fmt: skip
                yield ("bn_bwd", norm.bn_bwd_kernel, dt,
                       {"HAS_W": hb, "HAS_B": hb, "HAS_GAMMA": hg, "ACT": act,
                        "ACC_DTYPE": acc[dt], "BLOCK_N": bnn, "BLOCK_C": bc, "BLOCK_S": bs})  # fmt: skip
        for num in (1, 3, 8):
            for hc in (True, False):
                yield ("update", update.clamped_sgd_kernel, dt,
                       {"NUM": num, "HAS_CLAMP": hc, "ACC_DTYPE": acc[dt], "BLOCK": 2048})  # fmt: skip


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--arch", type=int, default=90)
    p.add_argument("--quick", action="store_true", help="2 activations instead of 4")
    p.add_argument("--smoke", action="store_true", help="every 17th variant only (CI)")
    args = p.parse_args()
    failures = 0
    t0 = time.time()
    n = 0
    for i, (name, kernel, dt, const) in enumerate(variants(args.quick)):
        if args.smoke and i % 17:
            continue
        n += 1
        tag = f"{name} {dt} " + " ".join(f"{k}={v}" for k, v in const.items() if k != "ACC_DTYPE")
        try:
            t = time.time()
            compile_variant(kernel, dt, const, args.arch)
            print(f"ok   {time.time() - t:5.2f}s {tag}", flush=True)
        except Exception as err:
            failures += 1
            print(f"FAIL {tag}: {type(err).__name__}: {str(err)[:2000]}", flush=True)
    print(f"{n - failures}/{n} variants compiled for sm_{args.arch} in {time.time() - t0:.0f}s")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
