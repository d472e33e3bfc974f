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

`mpirun -n N nanotransformer train ...` trains data-parallel (`distributed.py`, chapter 20):
--batch-size stays the global batch, rank 0 alone prints and writes.

Does not: run several experiments, or read a config file (every setting is a flag).
"""
import contextlib
import dataclasses
import os
import sys
import warnings
from pathlib import Path

import numpy as np

from . import cli_chat
from . import cli_tasks as per_kind
from .metrics import perplexity
from .cli_flags import UsageError, build_parser

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


SIZE_FLAGS = {"config": ("n_layer", "d_model", "n_head", "d_ff", "vocab_size", "block_size"),
              "batch_size": ("batch_size", "block_size", "n_layer", "d_model", "n_head", "vocab_size")}


@contextlib.contextmanager
def sizes_named(args):
    """A `resources.ResourceError` (a size the machine cannot hold) re-raised naming the size
    flags that were given, or an out-of-memory error as one line."""
    from .resources import ResourceError

    try:
        yield
    except ResourceError as e:
        given = [f"--{d.replace('_', '-')} {getattr(args, d)}" for d in SIZE_FLAGS[e.field]
                 if getattr(args, d, None) is not None]
        raise ValueError(f"{', '.join(given) if given else e.field}: {str(e).partition(': ')[2]}") from None
    except MemoryError as e:  # what no estimate foresaw (e.g. generating a billion samples at once)
        raise ValueError(f"out of memory ({e}); choose smaller sizes") from None


def train_overrides(args):
    keys = list(TRAIN_DEFAULTS) + ["min_lr", "grad_accum", "shard_optimizer"]
    return {k: getattr(args, k) for k in keys if getattr(args, k) is not None}


def cmd_train(args, out=print):
    from .checkpoint import has_checkpoint, load_checkpoint, read_sidecar
    from .train import TrainConfig, Trainer

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
        if has_checkpoint(out_dir):  # given --overwrite (cli.out_dir_claimed)
            out(f"note: {out_dir} holds a checkpoint; this run replaces it at its first evaluation (--overwrite)")
        trainer = Trainer(model, run.task, tcfg, tokenizer=run.tokenizer, out_dir=out_dir,
                          progress=not args.no_progress, data_meta=run.meta)
        for line in per_kind.describe(run, model, tcfg):
            out(line)
    fit_and_report(trainer, run, args, out_dir, out, args.sample_tokens)


def fit_and_report(trainer, run, args, out_dir, out, sample_tokens):
    """Train (every rank), then report (rank 0) -> whether this rank reported (is rank 0)."""
    for line in trainer.parallel_summary():
        out(line)
    trainer.fit(log=out if args.no_progress else None, stop_after=args.stop_after)
    if not trainer.world.is_root:  # the report (samples, BLEU, ...) is rank 0's alone; training was collective
        return False
    ev = trainer.history["eval"][-1] if trainer.history["eval"] else None
    if ev is not None:
        ppl = f", val perplexity {perplexity(ev['val']):.2f}" if getattr(trainer.task, "perplexity", False) else ""
        out(f"final: step {trainer.step}, val loss {ev['val']:.4f}{ppl}")
    out(f"checkpoint: {out_dir}/  loss curve: {out_dir / 'loss.png'}")
    if trainer.step < trainer.config.max_steps:
        again = f"sft {args.data} --resume" if run.kind == "sft" else "train --resume"
        out(f"stopped at step {trainer.step} of {trainer.config.max_steps} (--stop-after); continue with "
            f"`nanotransformer {again} --out {out_dir}`")
    per_kind.report(run, trainer.model, trainer.tokenizer, sample_tokens, out)
    return True


def cmd_finetune(args, out=print):
    from .checkpoint import has_checkpoint, load_checkpoint, read_sidecar
    from .finetuning import GPTClassifier
    from .train import TrainConfig, Trainer

    src, out_dir = Path(args.checkpoint), Path(args.out)  # out_dir is not src (cli.out_dir_claimed)
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
    if has_checkpoint(out_dir):  # given --overwrite (cli.out_dir_claimed)
        out(f"note: {out_dir} holds a checkpoint; this run replaces it at its first evaluation (--overwrite)")
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
            "length_penalty", "stop", "seed", "quantize"),
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
    model = ckpt.model
    if getattr(args, "quantize", None):
        from .quantize import quantize_model

        model = quantize_model(model, args.quantize)
    texts = generate(model, ckpt.tokenizer, prompt, 300 if args.max_new_tokens is None else args.max_new_tokens,
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


# ----------------------------------------------------------------------------- the output directory

WRITERS = ("train", "finetune", "sft", "dpo")  # the commands that write a checkpoint to --out


@contextlib.contextmanager
def out_dir_claimed(args):
    """Before any work, for a command that writes to --out: it must be a directory (or not exist
    yet) that can be written; it is created and locked for the whole command (`checkpoint.locked`:
    a second run on it fails at once), and then, under the lock, a new run must not replace a
    checkpoint unless told --overwrite. A directory the command created is removed again if the
    command fails before writing anything into it."""
    from .checkpoint import LOCK, has_checkpoint, locked

    if args.command not in WRITERS:
        yield
        return
    out = Path(args.out)
    src = getattr(args, "checkpoint", None) or getattr(args, "from_", None)  # finetune's, sft's and dpo's input
    if src is not None and out.resolve() == Path(src).resolve():
        raise ValueError(f"--out: refusing to write over the input checkpoint {src} (choose another directory)")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out: {out} is an existing file; expected a directory (new, or holding a checkpoint)")
    resume = getattr(args, "resume", False)
    if resume and getattr(args, "overwrite", False):
        raise ValueError("--overwrite: not with --resume (which continues the checkpoint in --out)")
    if resume and not out.is_dir():
        yield  # the command says there is no such checkpoint directory; nothing to lock or create
        return
    made = [p for p in [out, *out.resolve().parents] if not p.exists()]  # what mkdir will create
    probe = out if out.exists() else next(p for p in out.resolve().parents if p.exists())
    if not probe.is_dir():
        raise ValueError(f"--out: {out} is inside {probe}, which is a file, not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"--out: cannot write to {probe} (permission denied)")
    try:
        with locked(out):
            if not resume and has_checkpoint(out) and not args.overwrite:
                raise ValueError(f"--out: {out} already holds a checkpoint; use --resume to continue it, --overwrite "
                                 "to replace it (at the new run's first evaluation), or another --out")
            yield
    except OSError as e:
        if e.filename is None or not str(Path(e.filename).resolve()).startswith(str(out.resolve())):
            raise
        raise OSError(f"--out: cannot create or write {out} ({e.strerror})") from None
    finally:
        for p in made:  # a failed command's new, empty directories (only the lock file in --out itself)
            with contextlib.suppress(OSError):
                if p == out:
                    if [q.name for q in out.iterdir()] == [LOCK]:
                        (out / LOCK).unlink()
                        out.rmdir()
                else:
                    p.rmdir()  # only if empty


# ----------------------------------------------------------------------------- entry point


def _show_warning(message, category, filename, lineno, file=None, line=None):
    from . import distributed

    if distributed.world().is_root:  # once per job, not once per rank
        print(f"warning: {message}", file=sys.stderr)


def main(argv=None):
    """Console entry point. Returns the exit status (0 ok, 1 error, 2 usage, 130 interrupted)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as e:
        words = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")]
        text = str(e)
        if words and words[0] in WRITERS + ("generate", "eval", "chat"):  # argparse's top level reports it
            text = text.replace("`nanotransformer --help`", f"`nanotransformer {words[0]} --help`")
        print(f"error: {text}", file=sys.stderr)
        return 2
    if args.command is None:
        parser.print_help()
        return 2
    from . import distributed
    from .train import TrainingDiverged

    cmd = {"train": cmd_train, "finetune": cmd_finetune, "generate": cmd_generate, "eval": cmd_eval,
           "sft": cli_chat.cmd_sft, "chat": cli_chat.cmd_chat, "dpo": cli_chat.cmd_dpo}[args.command]
    old = warnings.showwarning
    warnings.showwarning = _show_warning
    try:  # under `mpirun -n N` (distributed.py) rank 0 alone prints
        w = distributed.world()
        if w.size == 1:
            with out_dir_claimed(args), sizes_named(args):
                cmd(args)
        else:  # rank 0 alone checks --out, locks and writes; its refusal is every rank's error
            with distributed.on_root(w, "the checks of --out", lambda: out_dir_claimed(args)), sizes_named(args):
                cmd(args, out=print if w.is_root else lambda *a, **k: None)
            if not w.talked:  # no training: a rank that failed may be waiting to tell (distributed.finish_error)
                w.exchange("the end of the command", None)
    except (ValueError, OSError, TrainingDiverged) as e:
        line = distributed.error_line(e)
        if line:
            print(line, file=sys.stderr)
        return distributed.finish_error(e)  # 1; a rank's own error after the ranks talked ends the job
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = old
    return 0


if __name__ == "__main__":
    sys.exit(main())
