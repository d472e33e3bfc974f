"""Shared fixtures: a seeded RNG, tiny dimensions, and the path to ../shared/data when present."""
from pathlib import Path

import numpy as np
import pytest

# B batch, T time, C channels, NH heads (STYLE.md: tiny dims for gradient checks)
TINY = dict(B=2, T=5, C=8, NH=2)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def dims():
    return dict(TINY)


@pytest.fixture
def shakespeare_path():
    p = SHARED_DATA / "tinyshakespeare.txt"
    if not p.exists():
        pytest.skip("../shared/data/tinyshakespeare.txt not present")
    return p


def backend_params():
    """pytest parameters "numpy" and "numba", the latter skipped when Numba is not available."""
    from nanotransformer.backend import get_ops

    out = []
    for name in ("numpy", "numba"):
        try:
            get_ops(name)
            out.append(name)
        except ValueError:
            out.append(pytest.param(name, marks=pytest.mark.skip(reason=f"backend {name!r} not available")))
    return out


def assert_step_parity(ref, other, rng, rtol, atol):
    """One training forward + backward of two models holding the same parameters (e.g. on two
    backends) agree: logits and loss within rtol/atol, gradients relative to their largest entry."""
    ids, tg = rng.integers(0, 17, size=(3, 12)), rng.integers(0, 17, size=(3, 12))
    out = []
    for m in (ref, other):
        logits, loss = m.forward(ids, tg, train=True, rng=np.random.default_rng(0))
        out.append((logits, loss, m.backward().copy()))
    np.testing.assert_allclose(out[1][0], out[0][0], rtol=rtol, atol=atol)
    np.testing.assert_allclose(out[1][1], out[0][1], rtol=rtol, atol=atol)
    scale = np.abs(out[0][2]).max()
    np.testing.assert_allclose(out[1][2] / scale, out[0][2] / scale, rtol=0, atol=10 * atol)


# ----------------------------------------------------------------------------- the CLI tests' corpus and runner

CLI_TEXT = "to be or not to be, that is the question.\n" * 60


@pytest.fixture
def corpus(tmp_path):
    """A small text file for `nanotransformer train` (test_cli.py, test_hostile.py)."""
    p = tmp_path / "hamlet.txt"
    p.write_text(CLI_TEXT, encoding="utf-8")
    return p


def run_cli(argv, capsys):
    """`nanotransformer argv` in this process -> (exit status, stdout, stderr)."""
    from nanotransformer.cli import main

    code = main(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err
