"""The `nanotransformer` command: train a GPT on a text, sample from it, measure its perplexity.

    nanotransformer train                              # the built-in corpus, ~1-2 minutes, prints a sample
    nanotransformer train tinyshakespeare --max-steps 3000 --out runs/shakespeare
    nanotransformer train --resume --out runs/shakespeare --max-steps 5000
    nanotransformer generate --checkpoint runs/shakespeare --prompt "ROMEO:" --temperature 0.8
    nanotransformer eval --checkpoint runs/shakespeare some.txt

Each subcommand maps onto the library: `data.load_text` / `data.build_tokenizer` /
`train.Trainer` for train, `generate.generate` for generate, `train.eval_loss` for eval.
Bad input (a missing file, a corrupt checkpoint, a diverging run...) prints one `error: ...`
line and exits with status 1; no traceback.

Dimension legend (the flags): B --batch-size, T --block-size, L --n-layer, NH --n-head,
C --d-model, V the tokenizer's vocabulary size.

Does not: run several experiments, read a config file (every setting is a flag), or
distribute training.
"""
import argparse
import math
import sys
import warnings
from pathlib import Path

import numpy as np

from . import __version__
from .backend import BACKENDS
from .model import POS_KINDS, GPTConfig

# defaults sized so that a bare `nanotransformer train` finishes in about 1-2 minutes on 2 cores
MODEL_DEFAULTS = dict(block_size=64, n_layer=4, n_head=4, d_model=128, dropout=0.0, pos="learned")
TRAIN_DEFAULTS = dict(batch_size=16, max_steps=500, lr=3e-3, warmup=50, weight_decay=0.1, grad_clip=1.0,
                      eval_interval=100, eval_iters=10, seed=1337)


def _positive_int(s):
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}")
    return v


def _nonneg_int(s):
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {s!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {s!r}")
    return v


MODEL_FLAGS = [  # (flag, type, help); defaults in MODEL_DEFAULTS
    ("--block-size", _positive_int, "context length T"),
    ("--n-layer", _positive_int, "transformer blocks L"),
    ("--n-head", _positive_int, "attention heads NH"),
    ("--d-model", _positive_int, "channels C"),
    ("--dropout", float, "dropout probability (embeddings and residual branches)"),
]
TRAIN_FLAGS = [  # defaults in TRAIN_DEFAULTS
    ("--batch-size", _positive_int, "sequences per step B"),
    ("--max-steps", _positive_int, "optimiser steps in total"),
    ("--lr", float, "peak learning rate"),
    ("--min-lr", float, "learning rate at the end of the cosine (default: lr/10)"),
    ("--warmup", _nonneg_int, "linear warm-up steps"),
    ("--weight-decay", float, "AdamW decay of the 2-D weights"),
    ("--grad-clip", float, "max global gradient norm, 0 = off"),
    ("--eval-interval", _positive_int, "evaluate and checkpoint every N steps"),
    ("--eval-iters", _positive_int, "batches per split per evaluation"),
    ("--seed", int, "seed of initialisation, batches and dropout"),
]


def _flag(group, flag, typ, text, defaults):
    key = flag[2:].replace("-", "_")
    if key in defaults:
        text = f"{text} (default: {defaults[key]})"
    group.add_argument(flag, type=typ, default=None, metavar="X" if typ is float else "N", help=text)


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults, except unset ones (None / False) and those the help text already states."""

    def _get_help_string(self, action):
        if action.default in (None, False) or "default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser():
    p = argparse.ArgumentParser(
        prog="nanotransformer",
        description="Train a small GPT (NumPy, hand-written backward passes) on a text, then sample from it.",
        epilog="Run `nanotransformer COMMAND --help` for the flags of each command.",
    )
    p.add_argument("--version", action="version", version=f"nanotransformer {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    # ------------------------------------------------------------------------- train
    t = sub.add_parser(
        "train", help="train a GPT on a text and print a sample",
        description="Train a GPT on a text file, a directory of text files, or a named corpus; checkpoint it "
                    "to --out, write --out/loss.png and print a sample. Model and training flags left unset "
                    "take the defaults shown (or, with --resume, the checkpoint's values).",
        formatter_class=_Formatter,
    )
    t.add_argument("data", nargs="?", default=None, metavar="DATA",
                   help="text file, directory of .txt/.md files, 'alice' (built in) or 'tinyshakespeare' "
                        "(downloaded once, sha256-checked). default: 'alice', or with --resume the "
                        "checkpoint's data")
    g = t.add_argument_group("data")
    g.add_argument("--tokenizer", default="char", metavar="char|bpe|FILE",
                   help="'char', 'bpe' (trained on DATA) or a saved tokenizer file")
    g.add_argument("--vocab-size", type=_positive_int, default=512, metavar="N",
                   help="vocabulary size for --tokenizer bpe")
    g.add_argument("--val-fraction", type=float, default=0.1, metavar="X",
                   help="fraction of the tokens (at the end) held out")
    g = t.add_argument_group("model (with --resume these must match the checkpoint)")
    for flag, typ, text in MODEL_FLAGS:
        _flag(g, flag, typ, text, MODEL_DEFAULTS)
    g.add_argument("--no-bias", action="store_true", help="no biases in linear layers and layer norms")
    g.add_argument("--pos", choices=POS_KINDS, help=f"position embeddings (default: {MODEL_DEFAULTS['pos']})")
    g.add_argument("--backend", choices=BACKENDS + ("auto",), default=None,
                   help="hot-op implementation (default: $NANOTRANSFORMER_BACKEND, else auto)")
    g = t.add_argument_group("training (with --resume, given flags override the checkpoint's)")
    for flag, typ, text in TRAIN_FLAGS:
        _flag(g, flag, typ, text, TRAIN_DEFAULTS)
    g = t.add_argument_group("output")
    g.add_argument("--out", default="out", metavar="DIR", help="checkpoint directory (also holds loss.png)")
    g.add_argument("--resume", action="store_true", help="continue the checkpoint in --out (bit-identically)")
    g.add_argument("--sample-tokens", type=_nonneg_int, default=300, metavar="N",
                   help="tokens to sample at the end (0: none)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")

    # ------------------------------------------------------------------------- generate
    s = sub.add_parser(
        "generate", help="sample text from a checkpoint",
        description="Continue a prompt with a trained model: sampling (temperature, top-k, top-p), "
                    "greedy (--temperature 0) or beam search (--num-beams > 1).",
        formatter_class=_Formatter,
    )
    s.add_argument("--checkpoint", required=True, metavar="DIR", help="checkpoint directory (train --out)")
    s.add_argument("--prompt", default="\n", metavar="TEXT",
                   help="text to continue; \\n stands for a newline (default: a newline)")
    s.add_argument("--max-new-tokens", type=_nonneg_int, default=300, metavar="N", help="tokens to generate")
    s.add_argument("--temperature", type=float, default=0.8, metavar="X", help="0 = greedy; <1 sharper, >1 more random")
    s.add_argument("--top-k", type=_positive_int, default=None, metavar="K",
                   help="sample only from the k most likely tokens")
    s.add_argument("--top-p", type=float, default=None, metavar="P",
                   help="nucleus: sample from the smallest set of tokens with probability >= p")
    s.add_argument("--num-samples", type=_positive_int, default=1, metavar="N", help="independent samples (one batch)")
    s.add_argument("--num-beams", type=_positive_int, default=1, metavar="N",
                   help="beam search with this many beams (>1)")
    s.add_argument("--length-penalty", type=float, default=1.0, metavar="X",
                   help="beam search: score / length**penalty")
    s.add_argument("--stop", action="append", default=None, metavar="TEXT",
                   help="end a sample before this text (repeatable)")
    s.add_argument("--seed", type=int, default=None, metavar="N", help="sampling seed (default: random)")
    s.add_argument("--backend", choices=BACKENDS + ("auto",), default=None, help="hot-op implementation")

    # ------------------------------------------------------------------------- eval
    e = sub.add_parser(
        "eval", help="loss and perplexity of a checkpoint on a text file",
        description="Mean cross-entropy (nats/token) and perplexity exp(loss) of the model on FILE, over "
                    "consecutive windows of block_size tokens (each token predicted once).",
        formatter_class=_Formatter,
    )
    e.add_argument("file", metavar="FILE", help="UTF-8 text file (or directory / corpus name, as for train)")
    e.add_argument("--checkpoint", required=True, metavar="DIR", help="checkpoint directory (train --out)")
    e.add_argument("--batch-size", type=_positive_int, default=16, metavar="N", help="windows per forward pass")
    e.add_argument("--backend", choices=BACKENDS + ("auto",), default=None, help="hot-op implementation")
    return p


# ----------------------------------------------------------------------------- train


def _model_config(args, vocab_size):
    vals = {k: getattr(args, k) for k in MODEL_DEFAULTS}
    vals = {k: (MODEL_DEFAULTS[k] if v is None else v) for k, v in vals.items()}
    return GPTConfig(vocab_size=vocab_size, bias=not args.no_bias, backend=args.backend, **vals)


def _train_overrides(args):
    keys = list(TRAIN_DEFAULTS) + ["min_lr"]
    return {k: getattr(args, k) for k in keys if getattr(args, k) is not None}


def cmd_train(args, out=print):
    from .checkpoint import has_checkpoint, read_sidecar
    from .data import TokenData, build_tokenizer, load_text
    from .model import GPT
    from .train import TrainConfig, Trainer

    out_dir = Path(args.out)
    if args.resume:
        sc = read_sidecar(out_dir)  # validates before any work
        cfg = sc["config"]
        for k in MODEL_DEFAULTS:
            given = getattr(args, k)
            if given is not None and given != cfg[k]:
                raise ValueError(f"--{k.replace('_', '-')}: cannot change the model when resuming "
                                 f"(the checkpoint in {out_dir} has {cfg[k]!r}, got {given!r})")
        from .checkpoint import load_checkpoint

        ckpt = load_checkpoint(out_dir, backend=args.backend)
        data_meta = ckpt.meta.get("data", {})
        text, name = load_text(args.data or data_meta.get("source"))
        data = TokenData(_encode(ckpt.tokenizer, text, name), data_meta.get("val_fraction", 0.1), name)
        trainer = Trainer.from_checkpoint(ckpt, data, progress=not args.no_progress, overrides=_train_overrides(args))
        out(f"resuming {out_dir} at step {trainer.step} of {trainer.config.max_steps} ({name})")
        if trainer.step >= trainer.config.max_steps:
            out(f"nothing to do: already at step {trainer.step}; raise --max-steps to train further")
    else:
        text, name = load_text(args.data)
        tok = build_tokenizer(text, args.tokenizer, args.vocab_size)
        data = TokenData(_encode(tok, text, name), args.val_fraction, name)
        config = _model_config(args, tok.vocab_size)
        data.check_block_size(config.block_size)
        tcfg = TrainConfig(**{**TRAIN_DEFAULTS, **_train_overrides(args)})
        model = GPT(config, seed=tcfg.seed)
        if has_checkpoint(out_dir):
            out(f"note: {out_dir} already holds a checkpoint; this run replaces it at its first evaluation "
                f"(use --resume to continue it instead)")
        source = args.data or "alice"
        if Path(source).exists():  # absolute, so --resume finds it from any directory
            source = str(Path(source).resolve())
        data_meta = {"source": source, "tokenizer": args.tokenizer, "val_fraction": args.val_fraction}
        trainer = Trainer(model, data, tcfg, tokenizer=tok, out_dir=out_dir, progress=not args.no_progress,
                          data_meta=data_meta)
        c = config
        out(f"data: {name}, {len(text):,} characters -> {len(data):,} tokens (vocab {tok.vocab_size}), "
            f"{len(data.split['train']):,} train / {len(data.split['val']):,} val")
        out(f"model: {model.num_params():,} parameters (L={c.n_layer}, NH={c.n_head}, C={c.d_model}, "
            f"T={c.block_size}, {c.pos} positions, backend {model.ops.name}); "
            f"training {tcfg.max_steps} steps of {tcfg.batch_size}x{c.block_size} tokens")

    log = out if args.no_progress else None
    trainer.fit(log=log)
    ev = trainer.history["eval"][-1] if trainer.history["eval"] else None
    if ev is not None:
        out(f"final: step {trainer.step}, val loss {ev['val']:.4f}, val perplexity {math.exp(ev['val']):.2f}")
    out(f"checkpoint: {out_dir}/  loss curve: {out_dir / 'loss.png'}")
    if args.sample_tokens:
        from .generate import generate

        prompt = _default_prompt(trainer.tokenizer)
        text = generate(trainer.model, trainer.tokenizer, prompt, args.sample_tokens, temperature=0.8, seed=0)[0]
        out("sample (temperature 0.8):")
        out(prompt + text)


def _encode(tok, text, name):
    try:
        return np.asarray(tok.encode(text), dtype=np.int64)
    except ValueError as e:
        raise ValueError(f"{name}: cannot be encoded with this tokenizer ({e})") from None


def _default_prompt(tok):
    """A newline if the tokenizer can encode it (a natural start of text), else its first token."""
    try:
        if tok.encode("\n"):
            return "\n"
    except ValueError:
        pass
    return tok.decode([0])


# ----------------------------------------------------------------------------- generate, eval


def cmd_generate(args, out=print):
    from .checkpoint import load_checkpoint
    from .generate import generate

    ckpt = load_checkpoint(args.checkpoint, backend=args.backend)
    if ckpt.tokenizer is None:
        raise ValueError(f"{args.checkpoint}: the checkpoint has no tokenizer, so it cannot turn text into ids")
    prompt = args.prompt.replace("\\n", "\n")  # let `--prompt 'ROMEO:\n'` mean a newline
    try:
        prompt_ids = ckpt.tokenizer.encode(prompt)
    except ValueError as e:
        raise ValueError(f"--prompt: cannot be encoded with the checkpoint's tokenizer ({e})") from None
    if not prompt_ids:
        raise ValueError("--prompt: expected at least one token, got an empty prompt")
    texts = generate(ckpt.model, ckpt.tokenizer, prompt, args.max_new_tokens, temperature=args.temperature,
                     top_k=args.top_k, top_p=args.top_p, num_return_sequences=args.num_samples, seed=args.seed,
                     stop=args.stop, num_beams=args.num_beams, length_penalty=args.length_penalty)
    for i, t in enumerate(texts):
        if i:
            out("-" * 40)
        out(prompt + t)


def cmd_eval(args, out=print):
    from .checkpoint import load_checkpoint
    from .data import load_text
    from .train import eval_loss

    ckpt = load_checkpoint(args.checkpoint, backend=args.backend)
    if ckpt.tokenizer is None:
        raise ValueError(f"{args.checkpoint}: the checkpoint has no tokenizer, so it cannot read text")
    text, name = load_text(args.file)
    ids = _encode(ckpt.tokenizer, text, name)
    if len(ids) < 2:
        raise ValueError(f"{name}: expected at least 2 tokens to measure a loss, got {len(ids)}")
    loss, n = eval_loss(ckpt.model, ids, batch_size=args.batch_size)
    out(f"{name}: {n:,} tokens predicted, loss {loss:.4f} nats/token, perplexity {math.exp(loss):.2f} "
        f"(checkpoint {args.checkpoint}, step {ckpt.step})")


# ----------------------------------------------------------------------------- entry point


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr)


def main(argv=None):
    """Console entry point. Returns the exit status (0 ok, 1 error, 2 usage, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from .train import TrainingDiverged

    cmd = {"train": cmd_train, "generate": cmd_generate, "eval": cmd_eval}[args.command]
    old = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        cmd(args)
    except (ValueError, OSError, TrainingDiverged) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = old
    return 0


if __name__ == "__main__":
    sys.exit(main())
