"""The machinery every Numba kernel of the package shares (internal: the op modules import it).

- `FASTMATH`, `JIT`: the one set of compile options (fastmath flags, error model, `cache=True`).
- `kernel`, `run`: compile a kernel twice from one source, threaded and serial, and run the serial
  build for calls too small to repay waking the threads (`SERIAL_BELOW`).
- `exp`, `tanh`: scalar exp and tanh for use inside kernels: NumPy-accurate libm calls in float64,
  vectorisable polynomial versions in float32 (libm's are scalar calls that block SIMD; this
  Numba has no SVML). `row_max`: the max of a row, four comparisons in flight.
- `gemm_nb`: the blocked matrix product on MR x WIDE_NR register tiles, then one MR x NR strip
  for the columns left, with its operands read in place, which `attention.py` runs per (batch,
  head); `tile_scratch`: the MR x WIDE_NR scratch tile; `linear_tile_scratch`: the
  LINEAR_MR x WIDE_NR one of the linear layers' packed product (`linear.py`); `transpose_block`:
  a small blocked transpose inside a kernel (`TB`).
- `TILE`: the register-tile sizes for this CPU's vector registers (`TILES`: 4 x 64 with AVX-512,
  4 x 16 with AVX2), chosen at import (`simd_of`; the environment variable NANOTRANSFORMER_SIMD
  overrides it).
- Thread pool setup (`GOMP_SPINCOUNT`: idle threads spin briefly, then sleep) and `num_threads`.
- `cache_depends_on_this_file`: ties the on-disk cache of every kernel to this file's contents
  too, because the helpers here are inlined into kernels defined elsewhere (see the last section).
- `wide_vector_features`: on AVX-512 CPUs, Numba compiles with 512-bit vectors (LLVM's tuning
  for Intel prefers 256-bit ones, and the register tiles then spill), set at import too.
- `cache_dir`: where that cache lives. Numba pickles what it caches, and loading a pickle runs
  code, so in a package directory that another user owns (a shared install) it goes to a per-user
  directory instead; set at import, before any kernel is defined (see "On-disk cache").

Dimension legend: out = A @ b with A (M, K) and b (K, N); MR x WIDE_NR and MR x NR register tiles,
KC k block.

Does not: implement any op (each has its own module) or validate arguments (the op modules'
wrappers do; nothing here is called with unchecked user input).
"""
import hashlib
import math
import os
import stat
import types as types_
import warnings
from collections import namedtuple
from pathlib import Path

import llvmlite.binding
import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.core.caching import FunctionCache
from numba.extending import intrinsic, overload

# ----------------------------------------------------------------------------- cache location
# (first in this file: it has to run before any kernel is defined, see _use_cache_dir)


def cache_dir(package_dir, env, uid):
    """Where Numba's on-disk cache of the kernels in `package_dir` should go: a directory, or None
    for Numba's default (the package's own __pycache__).

    Numba's cache files are pickles (the .nbi index is one, the .nbc data is loaded through it),
    and loading a pickle can run any code. So the cache may live beside the package only if
    nobody else can write there: `package_dir` and its __pycache__ (if any) owned by `uid`,
    writable by it, and not writable by group or others. Otherwise it goes to a per-user
    directory, $XDG_CACHE_HOME/nanotransformer/numba (~/.cache/... if unset or not absolute),
    created with mode 0o700. A NUMBA_CACHE_DIR the user set (non-empty) always wins.
    package_dir: Path, env: a mapping such as os.environ, uid: int (os.getuid()).
    """
    if env.get("NUMBA_CACHE_DIR"):
        return Path(env["NUMBA_CACHE_DIR"])
    private = True
    for d in (package_dir, package_dir / "__pycache__"):
        try:
            st = os.stat(d)
        except FileNotFoundError:  # no __pycache__ yet: Numba will create it, as this user, in package_dir
            continue
        except OSError:
            private = False
            break
        private &= st.st_uid == uid and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and os.access(d, os.W_OK)
    if private:
        return None
    base = env.get("XDG_CACHE_HOME", "")
    base = Path(base) if os.path.isabs(base) else Path(env.get("HOME") or os.path.expanduser("~")) / ".cache"
    return base / "nanotransformer" / "numba"


def _use_cache_dir():
    """Point Numba's cache at cache_dir(...) for this package. Must run before the first
    `cache=True` function is defined: Numba picks a function's cache directory then. Sets
    NUMBA_CACHE_DIR too (only if the user had not), so that Numba's reload of its settings from
    the environment (at every compilation) keeps it; other Numba code in this process, and child
    processes, cache there as well."""
    if not hasattr(os, "getuid"):  # Windows: no owners to compare, keep Numba's default
        return
    where = cache_dir(Path(__file__).resolve().parent, os.environ, os.getuid())
    if where is None or os.environ.get("NUMBA_CACHE_DIR"):
        return
    try:
        where.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:  # Numba then falls back to its own choices; say why the cache moved
        warnings.warn(f"nanotransformer.kernels: cannot create the kernel cache directory {where} ({e}); "
                      f"set NUMBA_CACHE_DIR to a private directory", stacklevel=2)
        return
    st = os.stat(where)
    if st.st_uid != os.getuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):  # it existed, and is not private
        import tempfile

        warnings.warn(f"nanotransformer.kernels: the kernel cache directory {where} is not private to this user "
                      "(owner or permissions); caching in a temporary directory for this run instead", stacklevel=2)
        where = Path(tempfile.mkdtemp(prefix="nanotransformer-numba-"))
    os.environ["NUMBA_CACHE_DIR"] = str(where)
    numba.config.CACHE_DIR = str(where)


_use_cache_dir()


# ----------------------------------------------------------------------------- 512-bit vectors

def wide_vector_features(host_features, cpu_name=None, cpu_features=None):
    """The feature string Numba should compile with (NUMBA_CPU_FEATURES), or None to keep its own.

    On a CPU with AVX-512F: its features plus "-prefer-256-bit". LLVM's tuning for Intel's
    AVX-512 cores (skylake-avx512 and later; the test machine reports "rocketlake") prefers
    256-bit vectors, so Numba's kernels got ymm registers: the 4 x 64 tile's 16 sums then need 32
    registers, spill, and the products ran at 40-45 % of OpenBLAS's sgemm. With 512-bit vectors:
    the product 1.5-2.1x faster, training steps in 0.56-0.69x the time (benchmarks/README.md,
    "The machine changed again: Intel Xeon"). AMD's Zen 4 has no such preference: the string
    changes nothing there. None when Numba was told which CPU to compile for (cpu_name / cpu_features: its
    NUMBA_CPU_NAME / NUMBA_CPU_FEATURES, which then win) or when there is no AVX-512.
    host_features: feature -> bool (llvmlite's host features)."""
    if cpu_name or cpu_features or not host_features.get("avx512f"):
        return None
    return ",".join(("+" if on else "-") + name for name, on in sorted(host_features.items())) + ",-prefer-256-bit"


def _use_wide_vectors():
    """Compile for 512-bit vectors where the CPU has them (`wide_vector_features`). Like the cache
    directory, must happen before Numba compiles or defines anything in this process: its target
    machine is made once, with the first jitted function. If that has happened already (other
    Numba code ran first), nothing changes: the kernels are then correct but compiled for 256-bit
    vectors. Sets NUMBA_CPU_FEATURES too (only if the user had not), as _use_cache_dir does, so that
    Numba's reload of its settings keeps it and child processes compile the same code."""
    from numba.core.registry import cpu_target

    if "_toplevel_target_context" in vars(cpu_target):  # Numba's target exists: too late
        return
    features = wide_vector_features(llvmlite.binding.get_host_cpu_features(), numba.config.CPU_NAME,
                                    numba.config.CPU_FEATURES)  # fmt: skip
    if features:
        os.environ["NUMBA_CPU_FEATURES"] = features
        numba.config.CPU_FEATURES = features


_use_wide_vectors()


# One set of fastmath flags for every kernel. Allowed: reassociation (so reductions vectorise),
# FMA contraction, approximate reciprocals/functions, no signed zeros. Never `nnan`/`ninf`: the
# kernels must still see the -inf of a mask and propagate a NaN rather than assume it away.
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}

# error_model="numpy": a division by zero gives inf/nan like NumPy instead of a Python exception;
# the exception check is a branch inside the loop that stops LLVM from vectorising it.
JIT = dict(fastmath=FASTMATH, error_model="numpy", cache=True)

# Numba's thread pool: Numba's default choice (TBB if installed, else OpenMP, else workqueue),
# with OpenMP's idle threads spinning for a short while (GOMP_SPINCOUNT=SPIN_COUNT, about 0.3 ms
# here) before they sleep, unless the user set OMP_WAIT_POLICY or GOMP_SPINCOUNT. Measured on 2
# cores (benchmarks/README.md, "Threads that wait briefly"):
# - long spins beside BLAS calls, whose threads spin too, cost most: with the linear layers still
#   on BLAS, libgomp's default (300,000 spins, ~7 ms) ran a training step 3.5x slower;
# - sleeping at once (PASSIVE, shipped until issue 17) made every kernel pay a wake-up of its
#   threads: a token of GPT-2 124M enters about 100 parallel regions, a step of the tiny config
#   about 120, and a wake-up in this VM costs tens of microseconds (with the short spin: tiny's
#   step 54 -> 44 ms, GPT-2 decoding 44 -> 48-50 tokens/s);
# - the short spin costs a process that alternates Numba kernels with BLAS at every step (no
#   package path does: `auto` runs every op on Numba) about 20 %, and a process that never runs a
#   Numba kernel nothing.
# The workqueue pool sleeps too, but entering a parallel region cost 80 us there against 3 us for
# OpenMP, and a 1M-element loop ran slower on 2 workqueue threads than on one (1.8x faster on 2
# OpenMP threads). The variable must be set before the OpenMP runtime starts, i.e. before the
# first parallel kernel runs. If another library loaded its libgomp first (PyTorch ships one),
# Numba's kernels run on that runtime, with the policy it started with.
SPIN_COUNT = 10_000
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)

# Below this much work (elements touched, or multiply-adds for products) a kernel runs its serial
# build: entering a parallel region costs 3 us (OpenMP, threads awake) to tens of us (threads
# asleep) or 80 us (workqueue), against ~0.2 us for a plain call, and a decoding step
# or a tiny batch is made of such small calls.
SERIAL_BELOW = 1 << 16


def kernel(fn):
    """@kernel: compile `fn` twice from one source, threaded (`prange` splits the loop over
    threads) and, as `.serial`, for the calling thread alone (`prange` is then `range`)."""
    threaded = njit(parallel=True, **JIT)(fn)
    # a renamed copy of the function, so that Numba's on-disk cache keeps the two builds apart
    twin = types_.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial", fn.__defaults__, fn.__closure__)
    twin.__qualname__ = fn.__qualname__ + "_serial"
    threaded.serial = njit(**JIT)(twin)
    return threaded


def run(kernel, work, *args):
    """kernel(*args), or its serial build if `work` is below SERIAL_BELOW (see there)."""
    return kernel(*args) if work >= SERIAL_BELOW else kernel.serial(*args)


# ----------------------------------------------------------------------------- exp, tanh

def exp(x):
    """exp(x) for a scalar. In Python (NUMBA_DISABLE_JIT=1) it is math.exp; compiled, see below."""
    return math.exp(x)


def tanh(x):
    """tanh(x) for a scalar. In Python (NUMBA_DISABLE_JIT=1) it is math.tanh; compiled, see below."""
    return math.tanh(x)


@intrinsic
def _pow2_f32(typingctx, k):
    """2.0^k as a float32, for a float32 k holding a whole number in [-126, 127], built from its
    bits: the exponent field is k + 127 and the mantissa 0. A conversion, an add, a shift and a
    bitcast, all on 32-bit lanes, which LLVM vectorises; a table of powers of two would need a
    SIMD gather per lookup instead (and Numba would do integer arithmetic on int32 in int64)."""

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        bits = builder.shl(builder.add(builder.fptosi(args[0], i32), ir.Constant(i32, 127)), ir.Constant(i32, 23))
        return builder.bitcast(bits, ir.FloatType())

    return types.float32(types.float32), codegen


# The float32 exp below is compiled without `reassoc`: it relies on the order of its float
# operations (the Cody-Waite split of ln 2, and 2^n applied as two factors that overflow only in
# the right order). Its flags stay on its instructions when LLVM inlines it into a kernel.
_JIT_ORDERED = dict(JIT, fastmath=FASTMATH - {"reassoc"})


@njit(**_JIT_ORDERED)
def _exp_f32(x):
    # exp(x) = 2^n * exp(r), n = round(x / ln 2), |r| <= ln2 / 2 (Cody-Waite: ln 2 split into a
    # short high part, exact in n * hi, and a low correction). exp(r) by its Taylor series to
    # r^6 (error < 3e-7 relative, about float32's own rounding), 2^n from its bits: plain
    # float32 arithmetic, which LLVM turns into SIMD. Every constant is a float32 and n comes
    # from np.floor (a float32), not math.floor (a Python int, which would turn the whole
    # polynomial into float64: 4x slower). The result is (2 p) * 2^(n-1), and 2^(n-1) is
    # 2^h * 2^(n-1-h) with h = (n-1) // 2, so each factor is a normal float32 from n = -150
    # (exp(-104): below the smallest denormal, 0) to n = 128 (x just below the overflow at 88.72).
    if x != x:  # NaN in, NaN out (the clamp below would otherwise turn it into a number)
        return x
    x = min(max(x, np.float32(-104.0)), np.float32(88.8))  # exp(-104) = 0 and exp(88.8) = inf in float32
    n = np.floor(x * np.float32(1.44269504) + np.float32(0.5))
    r = x - n * np.float32(0.693359375) - n * np.float32(-2.12194440e-4)
    p = np.float32(1 / 720)
    p = p * r + np.float32(1 / 120)
    p = p * r + np.float32(1 / 24)
    p = p * r + np.float32(1 / 6)
    p = p * r + np.float32(0.5)
    p = p * r + np.float32(1.0)
    p = p * r + np.float32(1.0)
    e = n - np.float32(1.0)
    h = np.floor(e * np.float32(0.5))
    return (p + p) * _pow2_f32(h) * _pow2_f32(e - h)


@njit(**JIT)
def _tanh_f32(x):
    # tanh(x) = 1 - 2 / (exp(2x) + 1): exact algebra, inf-safe (exp -> inf gives 1, -> 0 gives -1).
    # Absolute error ~1e-7, which is what float32 GELU needs (its output is x * (1 + tanh) / 2).
    return np.float32(1.0) - np.float32(2.0) / (_exp_f32(np.float32(2.0) * x) + np.float32(1.0))


@overload(exp, jit_options=dict(fastmath=FASTMATH, error_model="numpy"))
def _exp_impl(x):
    if x == types.float32:
        return lambda x: _exp_f32(x)
    return lambda x: math.exp(x)


@overload(tanh, jit_options=dict(fastmath=FASTMATH, error_model="numpy"))
def _tanh_impl(x):
    if x == types.float32:
        return lambda x: _tanh_f32(x)
    return lambda x: math.tanh(x)


@njit(**JIT)
def row_max(row, n):
    """max(row[:n]), n >= 1, with four independent running maxima. Without fastmath `nnan`,
    LLVM will not turn a max into SIMD, and a single chain waits on every comparison; four
    chains keep four comparisons in flight. (A NaN may be skipped here, but it still reaches
    the result through the exp(x - max) that follows.)"""
    m0 = m1 = m2 = m3 = row[0]
    j = 0
    while j + 4 <= n:
        m0 = max(m0, row[j])
        m1 = max(m1, row[j + 1])
        m2 = max(m2, row[j + 2])
        m3 = max(m3, row[j + 3])
        j += 4
    for jj in range(j, n):
        m0 = max(m0, row[jj])
    return max(max(m0, m1), max(m2, m3))


# ----------------------------------------------------------------------------- blocked product
#
# out = A @ b, b stored (K, N) row-major, A either a (M, K) array or the transpose of a (K, M) one
# (`a_t`), so that x @ w, dout @ w.T (w transposed once) and x.T @ dout (dW) need no copy of the
# big operand. Three levels of blocking, from the inside out:
#
# 1. Register tile (MR x WIDE_NR, 4 x 64 with AVX-512): the running sums of a 4-row block of out
#    live in registers (16 of AVX-512's 32 in float32) for a whole stretch of k. Each step of k
#    loads one WIDE_NR-wide row of b (SIMD loads) and 4 numbers of A (broadcasts), and does
#    4 WIDE_NR multiply-adds: the "outer-product" form of a GEMM micro-kernel (BLIS, OpenBLAS).
#    There are no horizontal sums, so a short k (64, the head size) costs nothing extra. Columns
#    past the last multiple of WIDE_NR take one MR x NR strip (NR = WIDE_NR / 2), then row by row.
#    The width follows the CPU (`TILES` below): the sums take half the vector registers, the rest
#    hold loads of b and broadcasts of A. On AVX-512 the 64-wide tile ran 1.2-1.45x faster than the
#    4 x 32 one alone (likely 8 registers of sums too few to cover the FMA latency), and attention's
#    backward at T = 256, hs = 64 1.15x (benchmarks/README.md, "Attention's wide tiles and the
#    embedding scatter"). On AVX2 (16 registers of 8 float32) a 4 x 64 tile needs 32 registers of
#    sums alone: it spills, and the linear layers' product ran at 47-64 % of OpenBLAS's sgemm, 4 x
#    16 (8 registers) at 78-99 % ("Register tiles per CPU"). Both widths come from one source
#    (`_tile_of`), and every element is the same sum over k in the same order at either width.
#    How the sums stay in registers: they are a (4, nr) array on the stack (`_scratch_tile_of`), indexed
#    only by loop counters with constant bounds; LLVM unrolls those loops, replaces the array by
#    scalars and packs the scalars into SIMD registers. Two details matter, measured: the four
#    rows are written out (x0..x3, not a loop over rows: 10x slower), and b is read through a row view
#    `b[k, j:j+nr]` indexed from 0 (Numba wraps negative indices, and an index it cannot prove
#    non-negative, like j + c, turns SIMD loads into gathers: 10x slower).
# 2. Cache blocks: a k-block of KC rows of b's WIDE_NR-column strip (KC x 64 x 4 B = 64 KB with
#    AVX-512, in L2; at attention's sizes k is the head size or the keys a row sees, mostly far
#    below KC) is reused while the 4-row tiles of a task's rows sweep over it.
# 3. Threads: `attention.py` runs it serially inside each (batch, head). (The linear layers'
#    product packs b into panels first, with a LINEAR_MR x WIDE_NR tile: `linear.py`.)

Tiles = namedtuple("Tiles", "wide_nr nr linear_mr linear_kc pack_a_t")
TILES = {  # per register file; measured: benchmarks/README.md, "Register tiles per CPU"
    # 32 registers of 16 float32: 4 x 64 sums (16 registers), a 4 x 32 strip; the linear layers'
    # panels KC = 256 rows deep (64 KB); dW's A = x.T read in place (packing it cost 5-15 %)
    "avx512": Tiles(wide_nr=64, nr=32, linear_mr=4, linear_kc=256, pack_a_t=False),
    # 16 registers of 8 float32: 4 x 16 sums (8 registers), a 4 x 8 strip; the linear layers' tile
    # one row taller, 5 x 16 (10 registers of sums, 5 of broadcast A, 1 of B: all 16; 6 rows
    # spill), because 8 chains of multiply-adds barely cover 2 pipes x 4 cycles of latency
    # (benchmarks/README.md, "a fifth row for the linear tile"); panels 1024 rows deep
    # (64 KB again: small's step 1.11x faster than at 256); A = x.T copied into a contiguous KC x 5
    # block per row tile, reused by all the task's panels (in place, the KC lines of a.T it touches
    # and the panel overfill a 32 KB L1: small's step 1.05x faster with the copy)
    "avx2": Tiles(wide_nr=16, nr=8, linear_mr=5, linear_kc=1024, pack_a_t=True),
}
SIMD_ENV = "NANOTRANSFORMER_SIMD"


def simd_of(env, host_features, cpu_name=None, cpu_features=None):
    """The key of TILES for the CPU Numba compiles for: env[SIMD_ENV] if set (it must be a key of
    TILES), else "avx512" if that CPU has AVX-512F, else "avx2". host_features: a mapping
    feature -> bool (llvmlite's host features); cpu_name / cpu_features: Numba's NUMBA_CPU_NAME /
    NUMBA_CPU_FEATURES if set, which make it compile for another CPU than this one (then only
    features that string names count, so a bare NUMBA_CPU_NAME gets the AVX2 tiles: correct, and
    not spilling, on any x86-64 CPU with or without AVX-512)."""
    want = env.get(SIMD_ENV)
    if want:
        if want not in TILES:
            raise ValueError(f"${SIMD_ENV} (the environment variable): expected one of {', '.join(map(repr, TILES))},"
                             f" got {want!r}")
        return want
    if cpu_features:
        return "avx512" if "+avx512f" in cpu_features.split(",") else "avx2"
    if cpu_name:
        return "avx2"
    return "avx512" if host_features.get("avx512f") else "avx2"


SIMD = simd_of(os.environ, llvmlite.binding.get_host_cpu_features(), numba.config.CPU_NAME, numba.config.CPU_FEATURES)
TILE = TILES[SIMD]

MR, NR = 4, TILE.nr  # the narrow register tile: rows x columns of out per micro-kernel call
KC = 256  # k block



def _stack_alloc_of(n):
    """An intrinsic f(x): a pointer to n uninitialised numbers of x's type on the stack (an LLVM
    alloca), n fixed when the kernel is compiled."""

    @intrinsic
    def stack_alloc(typingctx, x):
        def codegen(context, builder, signature, args):
            return cgutils.alloca_once(builder, context.get_value_type(x), size=context.get_constant(types.intp, n))

        return types.CPointer(x)(x), codegen

    return stack_alloc


def _scratch_tile_of(cols, rows=MR):
    """A function f(x): a (rows, cols) scratch array of x's dtype. In Python (NUMBA_DISABLE_JIT=1)
    a NumPy array; compiled, a view of stack memory (`_stack_alloc_of`), which LLVM can keep in
    registers."""
    alloc = _stack_alloc_of(rows * cols)

    def scratch_tile(x):
        return np.empty((rows, cols), dtype=np.asarray(x).dtype)

    @overload(scratch_tile, jit_options=dict(fastmath=FASTMATH, error_model="numpy"))
    def _impl(x):
        return lambda x: numba.carray(alloc(x), (rows, cols))

    return scratch_tile


WIDE_NR = TILE.wide_nr  # the wide register tile (gemm_nb's main tile, and the linear layers' packed one)
tile_scratch = _scratch_tile_of(WIDE_NR)
LINEAR_MR = TILE.linear_mr  # rows of the linear layers' register tile (`linear.py`)
linear_tile_scratch = _scratch_tile_of(WIDE_NR, LINEAR_MR)
_narrow_scratch = _scratch_tile_of(NR)


def _tile_of(nr, a_t):
    """A register-tile function of gemm_nb, for an MR x nr tile (nr = NR or WIDE_NR) and A = a.T or
    not (a_t). One source for all four: nr and a_t are the closure's only free variables, which
    Numba freezes into the compiled code as constants, so the loops over nr unroll as if written
    out and the branch on a_t is decided at compile time (a branch decided at run time, inside the
    k loop, cost 2x: measured). The on-disk cache keys a closure on its free variables, which
    keeps the four apart. (Nor is the k loop shared through a helper taking `acc`: handed to a
    call, the sums stay in memory instead of registers, measured 7x slower.)

    tile(out, a, b, i, j, k0, k1, add): out[i:i+4, j:j+nr] (+)= A[i:i+4, k0:k1] @ b[k0:k1, j:j+nr]
    with the 4 x nr sums in registers (see the section comment), A = a.T if a_t else a. `add`:
    accumulate into out, else overwrite it.
    """

    @njit(**JIT)
    def tile(out, a, b, i, j, k0, k1, add):
        acc = tile_scratch(out[i, j]) if nr == WIDE_NR else _narrow_scratch(out[i, j])
        for r in range(MR):
            for c in range(nr):
                acc[r, c] = 0
        for k in range(k0, k1):
            if a_t:  # A = a.T: 4 adjacent numbers of row k of a
                ak = a[k, i : i + MR]
                x0, x1, x2, x3 = ak[0], ak[1], ak[2], ak[3]
            else:
                x0, x1, x2, x3 = a[i, k], a[i + 1, k], a[i + 2, k], a[i + 3, k]
            bk = b[k, j : j + nr]
            for c in range(nr):
                y = bk[c]
                acc[0, c] += x0 * y
                acc[1, c] += x1 * y
                acc[2, c] += x2 * y
                acc[3, c] += x3 * y
        for r in range(MR):  # the store: out (+)= acc
            o = out[i + r, j : j + nr]
            for c in range(nr):
                o[c] = o[c] + acc[r, c] if add else acc[r, c]

    return tile


_tile_nb, _tile_t_nb = _tile_of(NR, False), _tile_of(NR, True)
_wide_tile_nb, _wide_tile_t_nb = _tile_of(WIDE_NR, False), _tile_of(WIDE_NR, True)


@njit(**JIT)
def _rows_nb(out, a, b, i0, i1, j0, j1, k0, k1, add, a_t):
    """out[i0:i1, j0:j1] (+)= A[i0:i1, k0:k1] @ b[k0:k1, j0:j1] one row at a time (SIMD along the
    row of b): the edges that do not fill a register tile, and one-row products."""
    for i in range(i0, i1):
        o = out[i, j0:j1]
        if not add:
            o[:] = 0
        for k in range(k0, k1):
            x = a[k, i] if a_t else a[i, k]
            bk = b[k, j0:j1]
            for c in range(j1 - j0):
                o[c] += x * bk[c]


@njit(**JIT)
def gemm_nb(out, a, b, i0, i1, j0, j1, kk, add, a_t):
    """out[i0:i1, j0:j1] (+)= A[i0:i1, :kk] @ b[:kk, j0:j1], A = a.T if a_t else a, serially: the
    blocked product attention's matmuls are built from (the linear layers pack b: linear.py). Indices are absolute
    so that b and out keep their C-contiguous rows (a sliced view would not).

    out: (>= i1, >= j1), a: (>= i1, >= kk) or, if a_t, (>= kk, >= i1), b: (>= kk, >= j1).
    """
    i_full = i0 + (i1 - i0) // MR * MR  # rows [i0, i_full) fill whole tiles
    j_wide = j0 + (j1 - j0) // WIDE_NR * WIDE_NR  # columns [j0, j_wide) fill MR x WIDE_NR tiles,
    j_full = j_wide + (j1 - j_wide) // NR * NR  # then at most one MR x NR strip
    for k0 in range(0, max(kk, 1), KC):  # (kk = 0 still runs once, to write the zeros)
        k1 = min(k0 + KC, kk)
        acc = add or k0 > 0  # later k blocks add to what the first one wrote
        for j in range(j0, j_wide, WIDE_NR):  # b's (KC x WIDE_NR) strip is reused by every row tile
            for i in range(i0, i_full, MR):
                if a_t:
                    _wide_tile_t_nb(out, a, b, i, j, k0, k1, acc)
                else:
                    _wide_tile_nb(out, a, b, i, j, k0, k1, acc)
        for j in range(j_wide, j_full, NR):
            for i in range(i0, i_full, MR):
                if a_t:
                    _tile_t_nb(out, a, b, i, j, k0, k1, acc)
                else:
                    _tile_nb(out, a, b, i, j, k0, k1, acc)
        if j_full < j1:  # the last < NR columns
            _rows_nb(out, a, b, i0, i_full, j_full, j1, k0, k1, acc, a_t)
        _rows_nb(out, a, b, i_full, i1, j0, j1, k0, k1, acc, a_t)  # the last < MR rows


@njit(**JIT)
def transpose_block(out, a, m, n):
    """out[:n, :m] = a[:m, :n].T, serially (small blocks inside a kernel), in TB x TB blocks
    written out in full: each row of a block of out is TB stores from TB rows of a, which LLVM
    unrolls into straight-line code (2.5x faster than one long strided loop, measured on
    attention's 256 x 64 and 64 x 32). The last < TB rows and columns of a: plain loops."""
    m_full, n_full = m - m % TB, n - n % TB
    for i0 in range(0, m_full, TB):
        for j0 in range(0, n_full, TB):
            for jj in range(TB):
                o = out[j0 + jj, i0 : i0 + TB]
                for ii in range(TB):
                    o[ii] = a[i0 + ii, j0 + jj]
    for j in range(n_full, n):  # the last < TB columns of a, every row
        o = out[j]
        for i in range(m):
            o[i] = a[i, j]
    for i in range(m_full, m):  # the last < TB rows of a, the other columns
        r = a[i]
        for j in range(n_full):
            out[j, i] = r[j]


TB = 8  # transpose block: 8 x 8 (16 was 25 % faster at 256 x 64 but slower at odd sizes)


def num_threads():
    """Threads Numba's prange uses (numba.set_num_threads changes it)."""
    return numba.get_num_threads()


# ----------------------------------------------------------------------------- on-disk cache
#
# Numba keys the on-disk cache of a `cache=True` function on its signature, its own bytecode and
# a stamp of the file it is defined in (numba 0.68: a hash of that file's contents), and on
# nothing it calls. Yet a kernel's machine code contains the helpers above: LLVM inlines
# gemm_nb, exp, row_max, ... into it, and globals such as MR are frozen in as constants. So after
# an edit of this file alone, the kernels of linear.py, attention.py, ... would go on loading
# machine code built from the old helpers (tested: see benchmarks/README.md, "JIT compile
# time"; Numba's docs list it among the caching limitations, numba issue #1833). The fix below
# swaps each function's stamp for (its file's stamp, this file's hash): an edit here recompiles
# every kernel, an edit of an op module only that module's kernels, as before.

# The register tiles (TILE) are frozen into the machine code too, and an environment variable can
# change them (SIMD_ENV), so they are part of the stamp.
_THIS_FILE_SHA256 = hashlib.sha256(Path(__file__).read_bytes() + repr(TILE).encode()).hexdigest()


def cache_depends_on_this_file(*modules):
    """Make the on-disk cache of every Numba function in `modules` (and of its `.serial` build)
    depend on this file's contents as well as on its own file's (see the section comment).
    Idempotent; a no-op under NUMBA_DISABLE_JIT=1, where nothing is compiled or cached."""
    for module in modules:
        for obj in list(vars(module).values()):
            for dispatcher in (obj, getattr(obj, "serial", None)):
                cache = getattr(dispatcher, "_cache", None)
                if not isinstance(cache, FunctionCache):
                    continue  # not a cache=True Numba function
                try:  # Numba internals (numba.core.caching 0.68: Cache -> IndexDataCacheFile)
                    cache._cache_file._source_stamp = (cache._impl.locator.get_source_stamp(), _THIS_FILE_SHA256)
                except AttributeError:
                    warnings.warn(
                        "nanotransformer.kernels: this Numba's cache internals differ from 0.68's, so the kernels'"
                        " on-disk cache no longer notices edits of kernels/jit.py; delete it by hand after such"
                        " an edit (see the nanotransformer.kernels docstring)", stacklevel=2)
                    return
