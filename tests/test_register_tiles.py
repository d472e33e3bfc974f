"""The register tiles follow the CPU (kernels/jit.py, TILES): AVX-512's 4 x 64 or AVX2's 4 x 16,
picked at import. This machine compiles one of them; the other is checked here too, in a
subprocess that forces it, so both keep agreeing with the NumPy twins whatever CPU the tests run on.
"""
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numba
import pytest

from nanotransformer.kernels import jit as KJ

ROOT = Path(__file__).resolve().parent.parent


def test_simd_follows_the_cpu_numba_compiles_for():
    assert KJ.simd_of({}, {"avx512f": True, "avx2": True}) == "avx512"
    assert KJ.simd_of({}, {"avx512f": False, "avx2": True}) == "avx2"
    assert KJ.simd_of({}, {}) == "avx2"
    # NUMBA_CPU_NAME / NUMBA_CPU_FEATURES: Numba compiles for that CPU, not this one
    assert KJ.simd_of({}, {"avx512f": True}, cpu_name="generic") == "avx2"
    assert KJ.simd_of({}, {"avx512f": False}, cpu_name="skylake-avx512", cpu_features="+avx2,+avx512f") == "avx512"
    assert KJ.simd_of({}, {"avx512f": True}, cpu_name="x", cpu_features="+avx2,-avx512f") == "avx2"
    # the environment variable wins
    assert KJ.simd_of({KJ.SIMD_ENV: "avx2"}, {"avx512f": True}) == "avx2"
    assert KJ.simd_of({KJ.SIMD_ENV: "avx512"}, {}) == "avx512"
    with pytest.raises(ValueError, match=r"\$NANOTRANSFORMER_SIMD \(the environment variable\): expected one of"
                                         r" 'avx512', 'avx2', got 'sse'"):
        KJ.simd_of({KJ.SIMD_ENV: "sse"}, {})


def test_tiles_in_use_and_in_the_cache_stamp():
    assert KJ.TILE == KJ.TILES[KJ.SIMD]
    assert (KJ.WIDE_NR, KJ.NR) == (KJ.TILE.wide_nr, KJ.TILE.nr) and KJ.WIDE_NR == 2 * KJ.NR
    for tile in KJ.TILES.values():  # a packed panel is 64 KB of float32 with either tile
        assert tile.linear_kc * tile.wide_nr * 4 == 64 * 1024
    # the tiles are frozen into the machine code, so they are part of the on-disk cache's stamp:
    # forcing the other tile can never load this one's kernels
    want = hashlib.sha256(Path(KJ.__file__).read_bytes() + repr(KJ.TILE).encode()).hexdigest()
    assert KJ._THIS_FILE_SHA256 == want


@pytest.mark.skipif(numba.config.DISABLE_JIT, reason="compiles the kernels (the tiles are compile-time constants)")
def test_the_other_register_tile_agrees_with_numpy(tmp_path):
    """test_kernels.py's product, linear and attention parity cases (tile and panel edges, the
    k blocks, the task splits), run with the tile this CPU does not use, compiled into a
    temporary cache (about two minutes). On a CPU without AVX-512, LLVM lowers the 4 x 64 tile's
    512-bit vectors onto 256-bit ones: slow, but the same arithmetic."""
    other = next(name for name in KJ.TILES if name != KJ.SIMD)
    env = dict(os.environ, NANOTRANSFORMER_SIMD=other, NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    check = f"from nanotransformer.kernels import jit; assert jit.SIMD == {other!r}, jit.SIMD"
    subprocess.run([sys.executable, "-c", check], env=env, check=True, cwd=ROOT)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/test_kernels.py", "-q", "-p", "no:cacheprovider",
         "-k", "linear or attention or product or split"],
        env=env, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and " failed" not in proc.stdout


def test_wide_vector_features():
    """On AVX-512 CPUs Numba compiles without LLVM's Intel preference for 256-bit vectors
    (kernels/jit.py, wide_vector_features); what the user told Numba wins."""
    host = {"avx2": True, "avx512f": True, "fma": True}
    assert KJ.wide_vector_features(host) == "+avx2,+avx512f,+fma,-prefer-256-bit"
    assert KJ.wide_vector_features({"avx2": True, "avx512f": False}) is None
    assert KJ.wide_vector_features({}) is None
    assert KJ.wide_vector_features(host, cpu_name="skylake-avx512") is None
    assert KJ.wide_vector_features(host, cpu_features="+avx2,+avx512f") is None


@pytest.mark.skipif(numba.config.DISABLE_JIT, reason="inspects compiled code")
@pytest.mark.skipif(KJ.SIMD != "avx512", reason="512-bit vectors need AVX-512")
def test_kernels_compile_to_512_bit_vectors(tmp_path):
    """After importing the kernels, Numba's code uses zmm registers (unless NUMBA_CPU_FEATURES was
    set by hand). In a fresh process: the setting only takes if the package comes first."""
    code = (
        "import os, numpy as np, numba\n"
        "user = os.environ.get('NUMBA_CPU_FEATURES')\n"
        "import nanotransformer.kernels\n"
        "@numba.njit(fastmath=True)\n"
        "def axpy(y, a, x):\n"
        "    for i in range(x.shape[0]):\n"
        "        y[i] += a * x[i]\n"
        "x = np.ones(1000, np.float32); axpy(x, np.float32(2), x)\n"
        "asm = next(iter(axpy.inspect_asm().values()))\n"
        "assert user or 'zmm' in asm, 'no zmm register in the compiled loop'\n"
    )
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    env.pop("NUMBA_CPU_FEATURES", None)
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
