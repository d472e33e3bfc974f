"""nanotransformer: a from-scratch transformer in NumPy with explicit forward/backward passes.

The layers themselves live in `layers.py` and `attention.py` (import them by module: the book
does); this namespace re-exports what a user reaches for first.
"""
__version__ = "0.1.0"

from .backend import get_ops
from .checkpoint import load_checkpoint, save_checkpoint
from .generate import generate
from .gradcheck import gradcheck
from .hf import from_pretrained
from .model import GPT, GPTConfig
from .pipeline import pipeline
from .tokenizer import BPETokenizer, CharTokenizer, load_tokenizer
from .train import TrainConfig, Trainer

__all__ = [
    "BPETokenizer", "CharTokenizer", "GPT", "GPTConfig", "TrainConfig", "Trainer", "from_pretrained",
    "generate", "get_ops", "gradcheck", "load_checkpoint", "load_tokenizer", "pipeline", "save_checkpoint",
]  # fmt: skip
