"""The `nanotransformer` command: train a GPT, a BERT or an encoder-decoder, fine-tune a GPT as a
classifier, and sample from / measure any of them.

    nanotransformer train                              # a GPT on the built-in corpus, ~30 s, prints a sample
    nanotransformer train tinyshakespeare --max-steps 3000 --out runs/shakespeare
    nanotransformer train --resume --out runs/shakespeare --max-steps 5000
    nanotransformer train --max-steps 5000 --stop-after 1000 --out runs/long   # in pieces: then --resume
    nanotransformer train --model bert --out runs/bert         # masked LM on alice, ~20 s, prints a fill-mask
    nanotransformer train --model seq2seq --out runs/numbers   # number -> words, ~20 s, exact match + BLEU
    nanotransformer train --model seq2seq pairs.tsv --block-size 64 --out runs/tsv   # source<TAB>target lines
    nanotransformer finetune runs/shakespeare ../shared/data/sentiment --out runs/sentiment
    nanotransformer generate --checkpoint runs/shakespeare --prompt "ROMEO:" --temperature 0.8
    nanotransformer generate --checkpoint runs/bert --prompt "Alice w_s"      # fills the _
    nanotransformer generate --checkpoint runs/numbers --prompt 307415 --num-beams 4
    nanotransformer generate --checkpoint runs/sentiment --prompt "Great phone, works well."
    nanotransformer eval --checkpoint runs/shakespeare some.txt      # perplexity (BERT: masked-LM loss)
    nanotransformer eval --checkpoint runs/numbers numbers           # exact match + BLEU
    nanotransformer eval --checkpoint runs/sentiment ../shared/data/sentiment   # accuracy + F1

Each subcommand maps onto the library: `train.Trainer` on a task of `tasks.py` for train and
finetune (`cli_tasks.py` builds the task of each model kind from DATA), `generation.generate`,
`bert.fill_mask`, `Seq2Seq.greedy_decode` / `beam_search` and `GPTClassifier.predict_proba`
for generate, `train.eval_loss`, `encoder_decoder.evaluate_seq2seq` and `metrics` for eval.
Bad input (a missing file, a corrupt checkpoint, a flag that does not apply to the model kind,
a diverging run...) prints one `error: ...` line and exits with status 1; no traceback.

Dimension legend (the flags): B --batch-size, T --block-size (the encoder-decoder's max_len),
L --n-layer (seq2seq: encoder and decoder each), NH --n-head, C --d-model, V the vocabulary size.

Does not: run several experiments, read a config file (every setting is a flag), or
distribute training.
"""
import contextlib
import dataclasses
import math
import sys
import warnings
from pathlib import Path

import numpy as np

from . import cli_chat
from . import cli_tasks as per_kind
from .cli_flags import build_parser

MODEL_DEFAULTS = per_kind.MODEL_DEFAULTS["gpt"]  # a bare `nanotransformer train`
TRAIN_DEFAULTS = per_kind.TRAIN_DEFAULTS["gpt"]


# ----------------------------------------------------------------------------- train, finetune


@contextlib.contextmanager
def training_flags_named():
    """A `train.TrainConfig` ValueError "field: ..." re-raised as "--field: ..." (the user typed a flag)."""
    from .train import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    try:
        yield
    except ValueError as e:
        field, sep, rest = str(e).partition(": ")
        if sep and field in fields:
            raise ValueError(f"--{field.replace('_', '-')}: {rest}") from None
        raise


def train_overrides(args):
    keys = list(TRAIN_DEFAULTS) + ["min_lr"]
    return {k: getattr(args, k) for k in keys if getattr(args, k) is not None}


def check_training_flags(args):
    """Every training flag given, checked on its own by TrainConfig's rules before any work (the
    config itself checks them again, with min_lr against lr, once the run's values are known)."""
    from .train import FIELD_RULES, check_train_value

    with training_flags_named():
        for name in FIELD_RULES:
            if getattr(args, name, None) is not None:
                check_train_value(name, getattr(args, name))


def cmd_train(args, out=print):
    from .checkpoint import has_checkpoint, load_checkpoint, read_sidecar
    from .train import TrainConfig, Trainer

    check_training_flags(args)
    out_dir = Path(args.out)
    if args.resume:
        sc = read_sidecar(out_dir)  # validates before any work
        kind = sc.get("kind", "gpt")
        made_by = ((sc.get("meta") or {}).get("data") or {}).get("kind")
        if made_by in ("sft", "dpo") or kind == "lora":
            what = made_by if made_by in ("sft", "dpo") else "LoRA"
            how = "`nanotransformer sft DATA --resume --out DIR`" if made_by == "sft" else "a new run (it has no --resume)"
            raise ValueError(f"--resume: {out_dir} holds a {what} run, which `train` does not continue; use {how}")
        if args.model is not None and args.model != kind:
            raise ValueError(f"--model: cannot change the model when resuming (the checkpoint in {out_dir} "
                             f"has {kind!r}, got {args.model!r})")
        per_kind.check_resume_flags(args, kind, sc, out_dir)
        ckpt = load_checkpoint(out_dir, backend=args.backend)
        run = per_kind.resume_run(ckpt, args.data)
        with training_flags_named():
            trainer = Trainer.from_checkpoint(ckpt, run.task, progress=not args.no_progress,
                                              overrides=train_overrides(args))
        what = run.name if kind == "gpt" else f"{run.name}; {kind}"
        out(f"resuming {out_dir} at step {trainer.step} of {trainer.config.max_steps} ({what})")
        if trainer.step >= trainer.config.max_steps:
            out(f"nothing to do: already at step {trainer.step}; raise --max-steps to train further")
    else:
        kind = args.model or "gpt"
        per_kind.reject_flags(args, [d for d, kinds in per_kind.ONLY_FOR.items() if kind not in kinds], f"--model {kind}")
        with training_flags_named():
            tcfg = TrainConfig(**{**per_kind.TRAIN_DEFAULTS[kind], **train_overrides(args)})
        model, run = per_kind.new_run(kind, args, tcfg.seed)
        if has_checkpoint(out_dir):
            out(f"note: {out_dir} already holds a checkpoint; this run replaces it at its first evaluation "
                f"(use --resume to continue it instead)")
        trainer = Trainer(model, run.task, tcfg, tokenizer=run.tokenizer, out_dir=out_dir,
                          progress=not args.no_progress, data_meta=run.meta)
        for line in per_kind.describe(run, model, tcfg):
            out(line)
    fit_and_report(trainer, run, args, out_dir, out, args.sample_tokens)


def fit_and_report(trainer, run, args, out_dir, out, sample_tokens):
    trainer.fit(log=out if args.no_progress else None, stop_after=args.stop_after)
    ev = trainer.history["eval"][-1] if trainer.history["eval"] else None
    if ev is not None:
        ppl = f", val perplexity {math.exp(ev['val']):.2f}" if getattr(trainer.task, "perplexity", False) else ""
        out(f"final: step {trainer.step}, val loss {ev['val']:.4f}{ppl}")
    out(f"checkpoint: {out_dir}/  loss curve: {out_dir / 'loss.png'}")
    if trainer.step < trainer.config.max_steps:
        again = f"sft {args.data} --resume" if run.kind == "sft" else "train --resume"
        out(f"stopped at step {trainer.step} of {trainer.config.max_steps} (--stop-after); continue with "
            f"`nanotransformer {again} --out {out_dir}`")
    per_kind.report(run, trainer.model, trainer.tokenizer, sample_tokens, out)


def cmd_finetune(args, out=print):
    from .checkpoint import has_checkpoint, load_checkpoint, read_sidecar
    from .finetuning import GPTClassifier
    from .train import TrainConfig, Trainer

    check_training_flags(args)
    src, out_dir = Path(args.checkpoint), Path(args.out)
    if out_dir.resolve() == src.resolve():
        raise ValueError(f"--out: refusing to write the classifier over the input checkpoint {src} (choose "
                         f"another directory)")
    kind = read_sidecar(src).get("kind", "gpt")
    if kind != "gpt":
        raise ValueError(f"{src}: expected a GPT checkpoint to fine-tune, got a {kind!r} checkpoint")
    ckpt = load_checkpoint(src, backend=args.backend)
    if ckpt.tokenizer is None:
        raise ValueError(f"{src}: the checkpoint has no tokenizer, so it cannot read sentences")
    gpt = ckpt.model
    if args.train_blocks is not None and args.train_blocks > gpt.config.n_layer:
        raise ValueError(f"--train-blocks: expected at most the checkpoint's {gpt.config.n_layer} blocks, "
                         f"got {args.train_blocks}")
    meta = {**per_kind.sentiment_meta(args.data, args), "pretrained": str(src.resolve()), "pretrained_step": ckpt.step}
    run = per_kind.sentiment_run(meta, ckpt.tokenizer, gpt.config.block_size)
    with training_flags_named():
        tcfg = TrainConfig(**{**per_kind.TRAIN_DEFAULTS["classifier"], **train_overrides(args)})
    clf = GPTClassifier(gpt, n_classes=2, pool=args.pool, train_blocks=args.train_blocks, seed=tcfg.seed)
    if args.lora_rank is not None and args.train_blocks is not None:
        raise ValueError("--train-blocks: not with --lora-rank (LoRA freezes the whole GPT and adapts every block)")
    if args.lora_rank is not None and args.stop_after is not None:
        raise ValueError("--stop-after: not with --lora-rank (a LoRA classifier run is not resumed by `train --resume`)")
    model = cli_chat.maybe_lora(args, clf, ckpt.tokenizer, src, True, out_dir, out, why="the classifier's head is new")
    if has_checkpoint(out_dir):
        out(f"note: {out_dir} already holds a checkpoint; this run replaces it at its first evaluation")
    trainer = Trainer(model, run.task, tcfg, tokenizer=ckpt.tokenizer, out_dir=out_dir, progress=not args.no_progress,
                      data_meta=meta)
    out(f"data: {run.name}, {len(run.labels):,} sentences ({np.mean(run.labels):.0%} positive), {len(run.train):,} "
        f"train / {len(run.val):,} val / {len(run.test):,} test, cut to {gpt.config.block_size} tokens")
    out(f"model: GPT of {src} (step {ckpt.step}) + a classification head ({args.pool}-token pooling), "
        f"{clf.num_params():,} parameters, {_num_trained(model):,} trained"
        + (f" (LoRA rank {model.rank} on {','.join(model.targets)})" if model is not clf else "")
        + f"; {tcfg.max_steps} steps of {tcfg.batch_size} sentences")
    fit_and_report(trainer, run, args, out_dir, out, 0)


def _num_trained(model):
    return model.num_trained() if hasattr(model, "num_trained") else model.num_trainable()


# ----------------------------------------------------------------------------- generate, eval

GENERATE_FLAGS = {  # the generate flags each kind uses (besides --checkpoint, --backend)
    "gpt": ("prompt", "max_new_tokens", "temperature", "top_k", "top_p", "num_samples", "num_beams",
            "length_penalty", "stop", "seed"),
    "seq2seq": ("prompt", "max_new_tokens", "num_beams", "length_penalty"),
    "bert": ("prompt", "top_k"),
    "classifier": ("prompt",),
}


def cmd_generate(args, out=print):
    from .checkpoint import load_checkpoint

    ckpt = load_checkpoint(args.checkpoint, backend=args.backend)
    from .lora import inference_model

    ckpt.model = inference_model(ckpt.model)  # a LoRA: merged into its base, a GPT or a classifier
    kind = ckpt.model.kind
    per_kind.reject_flags(args, [d for d in GENERATE_FLAGS["gpt"] if d not in GENERATE_FLAGS[kind]], f"a {kind} checkpoint")
    if ckpt.tokenizer is None:
        raise ValueError(f"{args.checkpoint}: the checkpoint has no tokenizer, so it cannot turn text into ids")
    if args.prompt is None and kind != "gpt":
        raise ValueError(f"--prompt: expected the text to {_PROMPT_USE[kind]} (a {kind} checkpoint)")
    prompt = ("\n" if args.prompt is None else args.prompt).replace("\\n", "\n")  # `--prompt 'ROMEO:\n'`
    {"gpt": _generate_gpt, "seq2seq": _translate, "bert": _fill, "classifier": _classify}[kind](ckpt, args, prompt, out)


_PROMPT_USE = {"seq2seq": "translate", "bert": "fill in (with a _ per hidden character)", "classifier": "classify"}


def _generate_gpt(ckpt, args, prompt, out):
    from .generation import generate

    try:
        prompt_ids = ckpt.tokenizer.encode(prompt)
    except ValueError as e:
        raise ValueError(f"--prompt: cannot be encoded with the checkpoint's tokenizer ({e})") from None
    if not prompt_ids:
        raise ValueError("--prompt: expected at least one token, got an empty prompt")
    texts = generate(ckpt.model, ckpt.tokenizer, prompt, 300 if args.max_new_tokens is None else args.max_new_tokens,
                     temperature=0.8 if args.temperature is None else args.temperature, top_k=args.top_k,
                     top_p=args.top_p, num_return_sequences=args.num_samples or 1, seed=args.seed, stop=args.stop,
                     num_beams=args.num_beams or 1,
                     length_penalty=1.0 if args.length_penalty is None else args.length_penalty)
    for i, t in enumerate(texts):
        if i:
            out("-" * 40)
        out(prompt + t)


def _translate(ckpt, args, prompt, out):
    model, vocab = ckpt.model, ckpt.tokenizer
    tokens = [c for c in prompt.strip() if c != " " or " " in vocab.stoi]  # numbers: "4 021" is 4021
    try:
        ids = vocab.encode(tokens)
    except ValueError as e:
        raise ValueError(f"--prompt: cannot be encoded with the checkpoint's vocabulary ({e})") from None
    if not ids or len(ids) > model.config.max_len:
        raise ValueError(f"--prompt: expected 1 to max_len={model.config.max_len} source tokens, got {len(ids)}")
    src = np.array([ids], dtype=np.int64)
    if (args.num_beams or 1) > 1:
        alpha = 0.6 if args.length_penalty is None else args.length_penalty
        ys = model.beam_search(src, args.num_beams, args.max_new_tokens, alpha=alpha)
    else:
        ys = model.greedy_decode(src, args.max_new_tokens)
    out(per_kind.join(vocab.decode(ys[0])))


def _fill(ckpt, args, prompt, out):
    from .bert import fill_mask

    if "_" not in prompt:
        raise ValueError("--prompt: expected at least one _ to fill in, got none")
    T = ckpt.model.config.block_size
    if len(prompt) > T - 1:  # [CLS] takes the first position
        raise ValueError(f"--prompt: expected at most {T - 1} characters (the model's block size {T}, less one "
                         f"for [CLS]), got {len(prompt)}")
    try:
        res = fill_mask(ckpt.model, ckpt.tokenizer, prompt, top_k=args.top_k or 3)
    except ValueError as e:
        raise ValueError(f"--prompt: {e}") from None
    filled = list(prompt)
    for pos, cands in res:
        filled[pos] = cands[0][0]
    out("".join(filled))
    for pos, cands in res:
        out(f"  _ at {pos}: " + ", ".join(f"{c!r} {p:.3f}" for c, p in cands))


def _classify(ckpt, args, prompt, out):
    from .tasks import encode_sentences

    model = ckpt.model
    sentence = per_kind.known_characters(ckpt.tokenizer, [prompt.strip()], "--prompt")[0]
    if not sentence:
        raise ValueError("--prompt: expected a sentence, got no text the checkpoint's tokenizer can encode")
    ids, lengths = encode_sentences(ckpt.tokenizer, [sentence], model.config.block_size)
    p = model.predict_proba(ids, lengths)[0]
    sentiment = (ckpt.meta.get("data") or {}).get("kind") == "sentiment" and len(p) == 2
    names = ("negative", "positive") if sentiment else tuple(f"class {k}" for k in range(len(p)))
    k = int(p.argmax())
    out(f"{names[k]} (class {k}): " + ", ".join(f"p({n}) = {q:.3f}" for n, q in zip(names, p)))


def cmd_eval(args, out=print):
    from .checkpoint import load_checkpoint

    per_kind.evaluate(load_checkpoint(args.checkpoint, backend=args.backend), args, out)


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

    cmd = {"train": cmd_train, "finetune": cmd_finetune, "generate": cmd_generate, "eval": cmd_eval,
           "sft": cli_chat.cmd_sft, "chat": cli_chat.cmd_chat, "dpo": cli_chat.cmd_dpo}[args.command]
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
