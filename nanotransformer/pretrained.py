"""Pretrained models shipped with the package, loaded by name and checked against their sha256.

    model, tok = load_pretrained("shakespeare-char")    # a character-level GPT on tinyshakespeare
    model, tok = load_pretrained("skills-chat")         # an instruction-tuned one (chat.ChatSession)
    generate(model, tok, "ROMEO:", 200, temperature=0.8, seed=0)

Each model is an ordinary checkpoint directory (`checkpoint.py`: safetensors weights + a JSON
sidecar, no pickles) under `nanotransformer/data/pretrained/<name>/`, made by a committed script
(`benchmarks/make_pretrained.py`, `benchmarks/quality_skills.py --ship`) that also writes `training.json` and a README beside it with the
config, steps, wall time, validation loss and machine load of the run. Before anything is parsed,
every file of the checkpoint is hashed and compared with the constant in `PRETRAINED`: a file that
was truncated, corrupted or swapped is one `ValueError` naming it.

Shipped models (weights only, float32; no optimiser moments, so they load for inference or
fine-tuning but do not resume their training run):

    shakespeare-char   GPT, L=4 NH=4 C=128 T=128, 65 characters; see its README for the figures
    skills-chat        the default `nanotransformer sft skills` run (chat tokens; chapters 18, 19)

Dimension legend: as in `model.py` (L layers, NH heads, C channels, T block size, V vocab).

Does not: download anything (the files are package data), or keep more than one version per name.
"""
import os
from pathlib import Path

from .data import DATA_DIR, file_sha256

PRETRAINED_DIR = DATA_DIR / "pretrained"
PRETRAINED_ENV = "NANOTRANSFORMER_PRETRAINED_DIR"  # another directory holding <name>/ folders (tests use it)

# name -> {file name: sha256}: every file load_checkpoint reads. benchmarks/make_pretrained.py prints these.
PRETRAINED = {
    "shakespeare-char": {
        "checkpoint.json": "fa034d606a999939ec3ee3a934912e4132e22a69f9cf380bd753b8e11432cf6b",
        "model-0004239-47e817.safetensors": "e30f89db3eec5e925f995172db967b09c6c000a5d077f6dd6aadb3548dcdadf7",
    },
    # benchmarks/quality_skills.py --ship prints these
    "skills-chat": {
        "checkpoint.json": "c99831589289ac1196baa10a3f1bed4d699724d26cbf4dca97f31618f3c898ad",
        "model-0002000-07bbf4.safetensors": "98b0fc892d3d50a30f7609e12b78dba749db7b8f079ec5bb634af4221e955394",
    },
}

# The slice of tinyshakespeare's validation split (token indices) that tests/test_pretrained.py
# evaluates on; make_pretrained.py records the model's loss on it.
VAL_SLICE = (0, 20_000)


def pretrained_dir(name, root=None):
    """The directory of shipped model `name` (under `root`, $NANOTRANSFORMER_PRETRAINED_DIR or the package)."""
    if name not in PRETRAINED:
        raise ValueError(f"{name!r}: no such pretrained model (available: {', '.join(sorted(PRETRAINED))})")
    if root is None:
        root = os.environ.get(PRETRAINED_ENV) or PRETRAINED_DIR
    return Path(root).expanduser() / name


def verify_pretrained(name, root=None):
    """Check every file of pretrained model `name` against its sha256 -> its directory.
    ValueError naming the first file that is missing or does not match."""
    d = pretrained_dir(name, root)
    for fname, expected in PRETRAINED[name].items():
        path = d / fname
        if not path.is_file():
            raise ValueError(f"{path}: missing (a file of the pretrained model {name!r}); reinstall nanotransformer")
        digest = file_sha256(path)
        if digest != expected:
            raise ValueError(
                f"{path}: sha256 is {digest}, expected {expected}: the file is truncated, corrupted or not the "
                f"one shipped with this version of nanotransformer; reinstall it or rerun benchmarks/make_pretrained.py"
            )
    return d


def load_pretrained(name, *, root=None, backend=None):
    """Load shipped model `name` -> (model, tokenizer), after checking its files' sha256.

    root: a directory holding `<name>/` instead of the package's own (default: $NANOTRANSFORMER_PRETRAINED_DIR,
    else `nanotransformer/data/pretrained/`). backend: "numpy" / "numba" / "auto" (default: as saved).
    """
    from .checkpoint import load_checkpoint

    ckpt = load_checkpoint(verify_pretrained(name, root), backend=backend)
    return ckpt.model, ckpt.tokenizer
