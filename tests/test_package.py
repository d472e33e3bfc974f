"""The package's shape: public names, module sizes, one of each thing above the layers."""
import importlib
import pkgutil
from pathlib import Path

import pytest

import nanotransformer

PACKAGE = Path(nanotransformer.__file__).parent
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(PACKAGE)) for p in MODULES])
def test_no_module_over_600_lines(path):
    n = len(path.read_text(encoding="utf-8").splitlines())
    assert n <= 600, f"{path.relative_to(PACKAGE)} has {n} lines; split it along a seam a reader would name"


@pytest.mark.parametrize("package", ["nanotransformer", "nanotransformer.kernels", "nanotransformer.exercises"])
def test_public_names_do_not_shadow_submodules(package):
    """`import nanotransformer.generation as g` (or `...kernels.linear`) must give the module, never
    a re-exported function of the same name."""
    pkg = importlib.import_module(package)
    submodules = {m.name for m in pkgutil.iter_modules(pkg.__path__)}
    assert not submodules & set(getattr(pkg, "__all__", ()))
    for name in submodules:
        mod = importlib.import_module(f"{package}.{name}")
        assert getattr(pkg, name) is mod, f"{package}.{name}"
    for name in getattr(pkg, "__all__", ()):
        assert hasattr(pkg, name), name


def test_every_model_is_one_param_store_on_the_one_block():
    """GPT, BERT, the encoder-decoder and the classifier share the parameter store; the three
    transformers run the one block (block.stack_forward), not a copy of it."""
    from nanotransformer import bert, encoder_decoder, finetuning, model
    from nanotransformer.params import ParamStore

    for cls in (model.GPT, bert.BERT, encoder_decoder.Seq2Seq, finetuning.GPTClassifier):
        assert issubclass(cls, ParamStore), cls
    for mod in (model, bert, encoder_decoder):
        assert "stack_forward" in Path(mod.__file__).read_text(), mod.__name__
    assert not (PACKAGE / "blocks.py").exists()
