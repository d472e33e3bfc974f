"""nanotransformer: a from-scratch transformer in NumPy with explicit forward/backward passes.

The layers themselves live in `layers.py` and `attention.py` (import them by module: the book
does); this namespace re-exports what a user reaches for first. No name here is also the name
of a submodule (so `import nanotransformer.generation as g` is always the module).
"""
__version__ = "0.1.0"

from .backend import get_ops
from .bert import BERT, BERTConfig
from .checkpoint import load_checkpoint, save_checkpoint
from .encoder_decoder import Seq2Seq, Seq2SeqConfig
from .finetuning import GPTClassifier
from .generation import generate
from .hf import from_pretrained
from .lora import LoRA
from .model import GPT, GPTConfig
from .optim import AdamW
from .pretrained import load_pretrained
from .tokenizer import BPETokenizer, CharTokenizer, load_tokenizer
from .train import TrainConfig, Trainer

__all__ = [
    "AdamW", "BERT", "BERTConfig", "BPETokenizer", "CharTokenizer", "GPT", "GPTClassifier", "GPTConfig",
    "LoRA", "Seq2Seq", "Seq2SeqConfig", "TrainConfig", "Trainer", "from_pretrained", "generate", "get_ops",
    "load_checkpoint", "load_pretrained", "load_tokenizer", "save_checkpoint",
]  # fmt: skip
