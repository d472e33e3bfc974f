"""The flags of the `nanotransformer` command: `build_parser()` and the argparse types that check
each value where it is typed, so a bad value is one usage error naming the flag before any work
("argument --seed: expected a non-negative integer, got '-1'"). `cli.py` runs the commands.

Does not: check one flag against another or against a checkpoint (the commands do), or the
training values' ranges beyond their type (train.FIELD_RULES does, for the flags and the API).
"""
import argparse
import dataclasses
import math

from . import __version__
from . import cli_chat
from . import cli_tasks as per_kind
from .backend import BACKENDS
from .block import MLP_KINDS, NORM_KINDS
from .model import ARCHS, POS_KINDS
from .quantize import QUANTIZE_KINDS


def flag_type(parse, expected, ok, metavar):
    """An argparse type: `parse` the text (int or float), then `ok(value)`, else the one usage
    error "argument --flag: expected <expected>, got '<text>'" (argparse adds the flag's name).
    Every numeric flag of every command is one of these, so nan, inf, -1 or 1e9 for an integer
    is refused by the flag that was typed, before any work."""

    def check(s):
        try:
            v = parse(s)
        except ValueError:
            v = None
        if v is None or not math.isfinite(v) or not ok(v):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {s!r}")
        return v

    check.metavar = metavar
    return check


positive_int = flag_type(int, "a positive integer", lambda v: v >= 1, "N")
nonneg_int = flag_type(int, "a non-negative integer", lambda v: v >= 0, "N")
finite = flag_type(float, "a finite number", lambda v: True, "X")
nonneg = flag_type(float, "a number >= 0", lambda v: v >= 0, "X")
positive = flag_type(float, "a number > 0", lambda v: v > 0, "X")
probability = flag_type(float, "a probability in [0, 1)", lambda v: 0 <= v < 1, "X")  # dropout, label smoothing
fraction = flag_type(float, "a fraction in (0, 1)", lambda v: 0 < v < 1, "X")  # held-out shares
top_p = flag_type(float, "a probability in (0, 1]", lambda v: 0 < v <= 1, "P")
above_one = flag_type(float, "a finite number > 1", lambda v: v > 1, "X")  # RoPE's base


def train_type(name):
    """The argparse type of TrainConfig field `name`: train.FIELD_RULES, the rules the config
    itself checks (so the flag and the Python API refuse the same values with the same words)."""
    from .train import FIELD_RULES

    from .train import TrainConfig

    ok, expected = FIELD_RULES[name]
    integer = {f.name: f.type for f in dataclasses.fields(TrainConfig)}[name] in (int, "int")
    return flag_type(int, expected, ok, "N") if integer else flag_type(float, expected, ok, "X")


MODEL_FLAGS = [  # (flag, type, help); defaults in cli_tasks.MODEL_DEFAULTS
    ("--block-size", positive_int, "context length T; seq2seq: max_len, at least the longest source or target + 1"),
    ("--n-layer", positive_int, "transformer blocks L (seq2seq: encoder blocks = decoder blocks)"),
    ("--n-head", positive_int, "attention heads NH"),
    ("--d-model", positive_int, "channels C"),
    ("--dropout", probability, "dropout probability (embeddings and residual branches)"),
    ("--label-smoothing", probability, "seq2seq: the training loss's label smoothing (eval reports plain cross-entropy)"),
]
TRAIN_FLAGS = [  # defaults in cli_tasks.TRAIN_DEFAULTS
    ("--batch-size", train_type("batch_size"), "sequences (pairs, sentences) per step B"),
    ("--max-steps", train_type("max_steps"), "optimiser steps in total (the learning-rate schedule's length)"),
    ("--lr", train_type("lr"), "peak learning rate"),
    ("--min-lr", nonneg, "learning rate at the end of the cosine (default: lr/10)"),
    ("--warmup", train_type("warmup"), "linear warm-up steps"),
    ("--weight-decay", train_type("weight_decay"), "AdamW decay of the 2-D weights"),
    ("--beta1", train_type("beta1"), "AdamW's first-moment decay, in [0, 1)"),
    ("--beta2", train_type("beta2"), "AdamW's second-moment decay, in [0, 1) (nanoGPT's Shakespeare recipe: 0.99)"),
    ("--eps", train_type("eps"), "AdamW's epsilon, > 0"),
    ("--grad-clip", train_type("grad_clip"), "max global gradient norm, 0 = off"),
    ("--eval-interval", train_type("eval_interval"), "evaluate and checkpoint every N steps"),
    ("--eval-iters", train_type("eval_iters"), "batches per split per evaluation"),
    ("--seed", train_type("seed"), "seed of initialisation, batches and dropout"),
    ("--grad-accum", train_type("grad_accum"), "micro-batches per step (per rank under mpirun): the --batch-size "
                                               "batch in K pieces, one gradient (default: 1)"),
]


def _flag(group, flag, typ, text, defaults):
    """Add `flag` (default None, so a given flag can be told from an unset one) with its
    default(s) in the help: one value, or one per model kind."""
    key = flag[2:].replace("-", "_")
    shown = {kind: d[key] for kind, d in defaults.items() if d.get(key) is not None}
    fitted = "".join(f"; {kind}: DATA's longest + 1, rounded up to 8" for kind, d in defaults.items()
                     if key in d and d[key] is None)  # seq2seq's max_len
    if len(set(map(str, shown.values()))) == 1:
        text = f"{text} (default: {next(iter(shown.values()))}{fitted})"
    elif shown:
        text = f"{text} (default: " + ", ".join(f"{v} {kind}" for kind, v in shown.items()) + f"{fitted})"
    group.add_argument(flag, type=typ, default=None, metavar=typ.metavar, help=text)


def training_flags(p, defaults, title):
    g = p.add_argument_group(title)
    for flag, typ, text in TRAIN_FLAGS:
        _flag(g, flag, typ, text, defaults)
    g.add_argument("--stop-after", type=positive_int, default=None, metavar="N",
                   help="stop (evaluated and checkpointed) after N steps of this run, keeping the schedule of "
                        "--max-steps; --resume then continues bit-identically")
    g.add_argument("--overwrite", action="store_true",
                   help="let a new run replace the checkpoint already in --out (without it, that is an error)")
    g.add_argument("--shard-optimizer", action="store_const", const=True, default=None,
                   help="under `mpirun -n N`: each rank keeps the AdamW moments of 1/N of the parameters (ZeRO-1)")
    return g


class UsageError(ValueError):
    """A command line argparse refused (a bad flag value, an unknown flag, a missing argument)."""


class Parser(argparse.ArgumentParser):
    """argparse, except that a refused command line raises `UsageError` "--flag: expected ..., got
    '...'" (cli.main prints it as the one line "error: ..." and exits with status 2) instead of
    printing the usage block and exiting from inside the parser."""

    def error(self, message):
        text = message.removeprefix("argument ")
        if not text.startswith(("-", "DATA", "FILE", "CHECKPOINT", "COMMAND")) or "required" in text:
            text += f" (`{self.prog} --help` lists the flags)"
        raise UsageError(text)


class Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults, except unset ones (None / False) and those the help text already states."""

    def _get_help_string(self, action):
        if action.default in (None, False) or "default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser():
    p = Parser(
        prog="nanotransformer",
        description="Train small transformers (NumPy, hand-written backward passes): a GPT on a text, a BERT "
                    "masked LM, an encoder-decoder on translation pairs; fine-tune a GPT as a classifier; "
                    "sample from and evaluate any of them.",
        epilog="Run `nanotransformer COMMAND --help` for the flags of each command.",
    )
    p.add_argument("--version", action="version", version=f"nanotransformer {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    # ------------------------------------------------------------------------- train
    t = sub.add_parser(
        "train", help="train a GPT, BERT or encoder-decoder and show what it learned",
        description="Train a model on DATA; checkpoint it to --out, write --out/loss.png, then print a GPT "
                    "sample, a BERT fill-mask or the encoder-decoder's exact match + BLEU and example "
                    "translations. With the defaults, on 2 idle cores, --model gpt takes about 30 s, "
                    "--model bert and --model seq2seq about 20 s each (a busy machine: several times longer). Model and training flags left unset "
                    "take the defaults shown for the --model (or, with --resume, the checkpoint's values).",
        formatter_class=Formatter,
    )
    t.add_argument("data", nargs="?", default=None, metavar="DATA",
                   help="gpt, bert: a text file, directory of .txt/.md files, 'alice' (built in, the default) or "
                        "'tinyshakespeare' (downloaded once, sha256-checked). seq2seq: 'numbers' (built in, the "
                        "default: numbers below a million -> English words, 10,000 train / 500 val) or a UTF-8 "
                        "file of source<TAB>target lines (characters as tokens). With --resume, default: the checkpoint's")
    g = t.add_argument_group("data")
    g.add_argument("--tokenizer", default=None, metavar="char|bpe|FILE",
                   help="gpt: 'char', 'bpe' (trained on DATA) or a saved tokenizer file (default: char; bert "
                        "always uses DATA's characters)")
    g.add_argument("--vocab-size", type=positive_int, default=None, metavar="N",
                   help="vocabulary size for --tokenizer bpe (default: 512)")
    g.add_argument("--val-fraction", type=fraction, default=None, metavar="X",
                   help="held out: the tokens at the end (gpt, bert) or, for a TSV, random pairs (default: 0.1)")
    g = t.add_argument_group("model (with --resume these must match the checkpoint)")
    g.add_argument("--model", choices=per_kind.KINDS, default=None,
                   help="gpt (causal LM), bert (masked LM) or seq2seq (encoder-decoder) (default: gpt)")
    for flag, typ, text in MODEL_FLAGS:
        _flag(g, flag, typ, text, per_kind.MODEL_DEFAULTS)
    g.add_argument("--arch", choices=tuple(ARCHS), default=None,
                   help="gpt: a preset of the switches below. gpt2: layer norm, learned positions, GELU, biases, "
                        "tied head. llama: RMSNorm, RoPE, SwiGLU, grouped-query attention (NKV = NH/2), no biases, "
                        "untied head (default: gpt2)")
    g.add_argument("--pos", choices=POS_KINDS, help="gpt: positions: learned, sinusoidal or rope (default: the --arch's)")
    g.add_argument("--norm", choices=NORM_KINDS, help="gpt: layernorm or rmsnorm (default: the --arch's)")
    g.add_argument("--mlp", choices=MLP_KINDS, help="gpt: gelu or swiglu (default: the --arch's)")
    g.add_argument("--n-kv-head", type=positive_int, default=None, metavar="N",
                   help="gpt: key/value heads, a divisor of --n-head (1 = multi-query; default: the --arch's)")
    g.add_argument("--d-ff", type=positive_int, default=None, metavar="N",
                   help="gpt: the MLP's hidden width (default: 4C for gelu, 8C/3 rounded up to 8 for swiglu)")
    g.add_argument("--rope-theta", type=above_one, default=None, metavar="X", help="gpt: RoPE's base (default: 10000)")
    g.add_argument("--bias", action=argparse.BooleanOptionalAction, default=None,
                   help="gpt: biases in linear layers and norms (default: the --arch's)")
    g.add_argument("--tie-embeddings", action=argparse.BooleanOptionalAction, default=None,
                   help="gpt: the LM head is the token embedding transposed (default: the --arch's)")
    g.add_argument("--qk-norm", action=argparse.BooleanOptionalAction, default=None,
                   help="gpt: RMSNorm on each head's queries and keys (default: off)")
    g.add_argument("--backend", choices=BACKENDS + ("auto",), default=None,
                   help="hot-op implementation (default: $NANOTRANSFORMER_BACKEND, else auto)")
    training_flags(t, {k: per_kind.TRAIN_DEFAULTS[k] for k in per_kind.KINDS},
                    "training (with --resume, given flags override the checkpoint's)")
    g = t.add_argument_group("output")
    g.add_argument("--out", default="out", metavar="DIR", help="checkpoint directory (also holds loss.png)")
    g.add_argument("--resume", action="store_true",
                   help="continue the checkpoint in --out, of any kind (bit-identically)")
    g.add_argument("--sample-tokens", type=nonneg_int, default=300, metavar="N",
                   help="gpt: tokens to sample at the end; bert, seq2seq: N > 0 prints examples (0: none)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")

    # ------------------------------------------------------------------------- finetune
    f = sub.add_parser(
        "finetune", help="fine-tune a GPT checkpoint as a sentence classifier",
        description="Load the GPT in CHECKPOINT, put a classification head on it (GPT-1 style) and train on "
                    "the labelled sentences of DATA, split at random (--split-seed) into train / validation / "
                    "test; save the classifier to --out and print its test accuracy and F1 next to a "
                    "bag-of-words logistic regression trained on the same train split. The input checkpoint "
                    "is never written to. 300 steps of a default `train` GPT take about 40 s on 2 cores.",
        formatter_class=Formatter,
    )
    f.add_argument("checkpoint", metavar="CHECKPOINT", help="a GPT checkpoint directory (train --out)")
    f.add_argument("data", metavar="DATA", help="a file of sentence<TAB>0|1 lines, or a directory of "
                                                "*_labelled.txt files (e.g. ../shared/data/sentiment)")
    f.add_argument("--out", required=True, metavar="DIR", help="where to save the classifier (not CHECKPOINT)")
    g = f.add_argument_group("classifier")
    g.add_argument("--pool", choices=("last", "mean"), default="last",
                   help="last: the last real token's state (it has read the whole sentence); mean: every token's")
    g.add_argument("--train-blocks", type=nonneg_int, default=None, metavar="N",
                   help="train only the last N blocks, the final layer norm and the head; freeze the rest "
                        "(default: train everything)")
    g = f.add_argument_group("data")
    g.add_argument("--test-fraction", type=fraction, default=0.2, metavar="X", help="sentences held out for the test")
    g.add_argument("--val-fraction", type=fraction, default=0.1, metavar="X", help="sentences held out for validation")
    g.add_argument("--split-seed", type=nonneg_int, default=0, metavar="N", help="seed of the random split")
    cli_chat.lora_flags(f)
    training_flags(f, {"classifier": per_kind.TRAIN_DEFAULTS["classifier"]}, "training")
    f.add_argument("--backend", choices=BACKENDS + ("auto",), default=None, help="hot-op implementation")
    f.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")

    # ------------------------------------------------------------------------- generate
    s = sub.add_parser(
        "generate", help="use a checkpoint on a prompt: continue, translate, fill in or classify it",
        description="GPT: continue the prompt, sampling (temperature, top-k, top-p), greedy (--temperature 0) or "
                    "beam search (--num-beams > 1). seq2seq: translate the prompt (numbers: its digits), greedy "
                    "or beam search. BERT: fill each _ of the prompt. classifier: the prompt's class and "
                    "probabilities. A flag the checkpoint's kind does not use is an error.",
        formatter_class=Formatter,
    )
    s.add_argument("--checkpoint", required=True, metavar="DIR", help="checkpoint directory (train/finetune --out)")
    s.add_argument("--prompt", default=None, metavar="TEXT",
                   help="the text; \\n stands for a newline (default for a GPT: a newline)")
    s.add_argument("--max-new-tokens", type=nonneg_int, default=None, metavar="N",
                   help="gpt, seq2seq: tokens to generate (default: 300 gpt; seq2seq: as many as max_len allows)")
    s.add_argument("--temperature", type=nonneg, default=None, metavar="X",
                   help="gpt: 0 = greedy; <1 sharper, >1 more random (default: 0.8)")
    s.add_argument("--top-k", type=positive_int, default=None, metavar="K",
                   help="gpt: sample only from the k most likely tokens; bert: candidates shown per _ (default 3)")
    s.add_argument("--top-p", type=top_p, default=None, metavar="P",
                   help="gpt: nucleus, sample from the smallest set of tokens with probability >= p")
    s.add_argument("--num-samples", type=positive_int, default=None, metavar="N",
                   help="gpt: independent samples, one batch (default: 1)")
    s.add_argument("--num-beams", type=positive_int, default=None, metavar="N",
                   help="gpt, seq2seq: beam search with this many beams (>1) (default: 1)")
    s.add_argument("--length-penalty", type=finite, default=None, metavar="X",
                   help="beam search; gpt: score / length**X (default: 1.0); seq2seq: GNMT's score / "
                        "((5 + length) / 6)**X (default: 0.6)")
    s.add_argument("--stop", action="append", default=None, metavar="TEXT",
                   help="gpt: end a sample before this text (repeatable)")
    s.add_argument("--seed", type=nonneg_int, default=None, metavar="N", help="gpt: sampling seed (default: random)")
    s.add_argument("--backend", choices=BACKENDS + ("auto",), default=None, help="hot-op implementation")
    s.add_argument("--quantize", choices=QUANTIZE_KINDS, default=None,
                   help="gpt: decode with int8 weights (per-output-channel scales; 2-4x faster decoding measured, see chapter 10)")

    # ------------------------------------------------------------------------- eval
    e = sub.add_parser(
        "eval", help="measure a checkpoint on data (perplexity, masked-LM loss, BLEU, accuracy)",
        description="gpt: mean cross-entropy (nats/token) and perplexity exp(loss) on FILE, over consecutive "
                    "windows of block_size tokens (each token predicted once). bert: masked-LM loss on FILE's "
                    "text, masked with --seed. seq2seq: exact match and BLEU on 'numbers' or a TSV file "
                    "(the run's own data: its held-out pairs). classifier: accuracy and F1 on a sentiment file "
                    "or directory (the run's own data: its held-out test split).",
        formatter_class=Formatter,
    )
    e.add_argument("file", metavar="FILE", help="the DATA, as for train or finetune: text file, directory, corpus "
                                                "name, 'numbers', a TSV file or sentiment data")
    e.add_argument("--checkpoint", required=True, metavar="DIR", help="checkpoint directory (train/finetune --out)")
    e.add_argument("--batch-size", type=positive_int, default=None, metavar="N",
                   help="rows per forward pass (default: 16 windows for gpt/bert, 256 pairs or sentences)")
    e.add_argument("--num-beams", type=positive_int, default=None, metavar="N",
                   help="seq2seq: beam search with this many beams (default: greedy)")
    e.add_argument("--seed", type=nonneg_int, default=None, metavar="N", help="bert: seed of the masking (default: 0)")
    e.add_argument("--backend", choices=BACKENDS + ("auto",), default=None, help="hot-op implementation")

    # ------------------------------------------------------------------------- sft, chat, dpo
    cli_chat.add_parsers(sub, Formatter, training_flags, BACKENDS + ("auto",))
    return p
