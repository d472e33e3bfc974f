"""The model shipped with the package: it loads by name, its files are sha256-checked, it has
learned tinyshakespeare, and `pip install .` ships it (package data)."""
import json
import shutil
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import pytest

from nanotransformer.model import GPT
from nanotransformer.pretrained import (PRETRAINED, PRETRAINED_DIR, PRETRAINED_ENV, VAL_SLICE, load_pretrained,
                                        pretrained_dir)

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "nanotransformer"
NAME = "shakespeare-char"
# The shipped model's loss on val[VAL_SLICE] is recorded in its training.json (1.4899 nats/char);
# the bound leaves room for other BLAS builds only, and is far below an untrained or barely trained
# model (uniform over 65 characters is 4.17, the bigram model ~2.5, notebook 08's small run ~3).
VAL_LOSS_BOUND = 1.5


@pytest.fixture(scope="module")
def shipped():
    return load_pretrained(NAME)


def test_loads_by_name(shipped):
    model, tok = shipped
    assert isinstance(model, GPT)
    assert model.params.dtype == np.float32
    assert tok.vocab_size == model.config.vocab_size == 65
    assert model.num_params() <= 1_050_000
    made = json.loads((pretrained_dir(NAME) / "training.json").read_text(encoding="utf-8"))
    assert made["params"] == model.num_params()
    assert made["config"]["n_layer"] == model.config.n_layer
    size = sum((PRETRAINED_DIR / NAME / f).stat().st_size for f in PRETRAINED[NAME])
    assert size <= 4.2e6, f"the shipped files take {size:,} bytes"
    # it decodes to text the tokenizer can round-trip
    from nanotransformer.generation import generate

    out = generate(model, tok, "ROMEO:", 40, temperature=0, seed=0)[0]
    assert len(out) == 40 and tok.decode(tok.encode(out)) == out


@pytest.mark.parametrize("name", sorted(PRETRAINED))
def test_every_file_has_a_checksum(name):
    d = PRETRAINED_DIR / name
    sidecar = json.loads((d / "checkpoint.json").read_text(encoding="utf-8"))
    assert set(PRETRAINED[name]) == {"checkpoint.json", sidecar["weights"]}
    assert sidecar.get("optimizer") is None  # weights only: nothing to resume, half the bytes


def _copy(tmp_path):
    shutil.copytree(PRETRAINED_DIR / NAME, tmp_path / NAME)
    return tmp_path


def _weights(root):
    return next(f for f in PRETRAINED[NAME] if f.endswith(".safetensors"))


def test_copy_loads_from_a_root(tmp_path):
    root = _copy(tmp_path)
    model, _ = load_pretrained(NAME, root=root)
    assert np.array_equal(model.params, load_pretrained(NAME)[0].params)


@pytest.mark.parametrize("how", ["flip", "truncate"])
@pytest.mark.parametrize("which", ["weights", "checkpoint.json"])
def test_checksum_enforced(tmp_path, monkeypatch, how, which):
    root = _copy(tmp_path)
    name = _weights(root) if which == "weights" else "checkpoint.json"
    path = root / NAME / name
    raw = bytearray(path.read_bytes())
    if how == "flip":
        raw[len(raw) // 2] ^= 0x01  # one bit, in the middle of the file
    else:
        raw = raw[: len(raw) - 100]
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=rf"{name}: sha256 is [0-9a-f]{{64}}, expected"):
        load_pretrained(NAME, root=root)
    monkeypatch.setenv(PRETRAINED_ENV, str(root))  # the environment variable points to the same copy
    with pytest.raises(ValueError, match=name):
        load_pretrained(NAME)


def test_missing_file(tmp_path):
    root = _copy(tmp_path)
    (root / NAME / _weights(root)).unlink()
    with pytest.raises(ValueError, match=r"safetensors: missing"):
        load_pretrained(NAME, root=root)


def test_unknown_name():
    with pytest.raises(ValueError, match=r"'gpt-5': no such pretrained model \(available: shakespeare-char, skills-chat\)"):
        load_pretrained("gpt-5")


def test_val_loss_below_bound(shipped, shakespeare_path):
    from nanotransformer.data import TokenData, load_text
    from nanotransformer.train import eval_loss

    model, tok = shipped
    text, _ = load_text("tinyshakespeare")
    data = TokenData(np.array(tok.encode(text)), val_fraction=0.1)  # the split the model was trained with
    val = data.split["val"][VAL_SLICE[0] : VAL_SLICE[1]]
    loss, n = eval_loss(model, val, batch_size=32)
    assert n == len(val) - 1
    assert loss < VAL_LOSS_BOUND, f"val loss {loss:.4f} on val[{VAL_SLICE[0]}:{VAL_SLICE[1]}]"
    made = json.loads((pretrained_dir(NAME) / "training.json").read_text(encoding="utf-8"))
    assert abs(loss - made["val_loss_slice"]) < 1e-3  # the figure recorded beside the weights


@pytest.mark.parametrize("name", sorted(PRETRAINED))
def test_package_data_ships_the_files(name):
    """setuptools installs only files that [tool.setuptools.package-data] globs match."""
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["package-data"]
    patterns = globs["nanotransformer"]
    shipped = [p.relative_to(PACKAGE).as_posix() for p in (PRETRAINED_DIR / name).iterdir() if p.is_file()]
    for f in list(PRETRAINED[name]) + ["training.json", "README.md"]:
        rel = f"data/pretrained/{name}/{f}"
        assert rel in shipped, f"{rel}: not in the package directory"
        # fnmatch's * crosses '/', setuptools' does not: compare path component by component
        assert any(len(p.split("/")) == len(rel.split("/")) and all(fnmatch(a, b) for a, b in
                   zip(rel.split("/"), p.split("/"))) for p in patterns), f"{rel}: matched by no package-data glob"


def test_skills_chat_answers_held_out_questions():
    """The shipped chat model (the default `sft skills` run) answers held-out arithmetic: its
    training.json records >= 90 % on add2 over 200 test questions; 60 here must clear 80 %
    (an untrained or barely trained model gets ~0 %), and the figures beside it hold."""
    from nanotransformer.chat import answer, has_chat_tokens
    from nanotransformer.skills import skills_dataset

    model, tok = load_pretrained("skills-chat")
    assert has_chat_tokens(tok) and model.config.vocab_size == tok.vocab_size
    exs = [e for e in skills_dataset("test", 540, seed=0, multi_turn=0.0) if e.skill == "add2"][:60]
    right = sum(answer(model, tok, list(e.prompt)) == e.answer for e in exs)
    assert right / len(exs) > 0.8, f"{right} of {len(exs)} held-out additions right"
    made = json.loads((pretrained_dir("skills-chat") / "training.json").read_text(encoding="utf-8"))
    assert made["exact_match"]["add2"] >= 0.9 and made["overall"] >= 0.75 and made["seconds"] <= 600
