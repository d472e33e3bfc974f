"""The chat half of the `nanotransformer` command: `sft` (instruction tuning), `chat` (a REPL)
and `dpo` (preference tuning), and `eval ... skills`. `cli.py` registers the parsers built here
and prints the errors.

    nanotransformer sft skills --out runs/sft                      # a fresh char model, ~9 min
    nanotransformer sft alpaca.json --from runs/gpt2 --out runs/sft --lora-rank 8
    nanotransformer chat --checkpoint runs/sft                     # type; /reset, /exit
    echo "What is 47 + 38?" | nanotransformer chat --checkpoint runs/sft      # scripted: one answer per line
    nanotransformer eval --checkpoint runs/sft skills              # exact match per skill
    nanotransformer dpo skills --from runs/sft --out runs/dpo

A run is rebuilt from its data meta (saved in the checkpoint), as in `cli_tasks.py`: the source
(skills, or a file's absolute path), the number of examples and the seeds, so `--resume`
continues on the same conversations.

Dimension legend: B batch, T block size, N examples.

Does not: hold model or training code (chat.py, tasks.py, skills.py, train.py, dpo.py do).
"""
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from .data import check_data_unchanged, data_hashed
from .quantize import QUANTIZE_KINDS, quantize_model

SFT_MODEL = dict(block_size=128, n_layer=4, n_head=4, d_model=128, dropout=0.0)  # a fresh `sft skills` model
SFT_TRAIN = dict(batch_size=32, max_steps=2000, lr=3e-3, warmup=100, weight_decay=0.1, grad_clip=1.0,
                 eval_interval=500, eval_iters=5, seed=1337, beta1=0.9, beta2=0.99, eps=1e-8)  # fmt: skip
SFT_FROM_TRAIN = dict(SFT_TRAIN, max_steps=1000, lr=3e-4, eval_interval=250)  # fine-tuning a pretrained model
SKILLS_DATA = dict(n_train=100_000, n_val=1_000, seed=0)
EVAL_PER_SKILL = 200  # `eval ... skills`: test questions per skill


def add_parsers(sub, formatter, training_flags, backends):
    """The sft, chat and dpo subcommands (their numeric flags take cli_flags' checked types)."""
    from .cli_flags import fraction, nonneg, positive, positive_int, top_p, nonneg_int
    s = sub.add_parser(
        "sft", help="instruction-tune a GPT on conversations (skills, Alpaca JSON, chat JSONL)",
        description="Train a GPT to answer: next-token loss on the assistant's tokens only, conversations in the "
                    "chat template (chat.py) packed into rows of --block-size. Without --from, a fresh "
                    "character-level model is trained (about 9 minutes with the defaults on 2 cores); with it, "
                    "the checkpoint's GPT is fine-tuned (its tokenizer gains the chat tokens).",
        formatter_class=formatter,
    )
    s.add_argument("data", metavar="DATA", help="'skills' (built in: arithmetic, lists, counting, words, facts; "
                                                "held-out test values) or an Alpaca-style JSON file or a chat JSONL file")
    s.add_argument("--from", dest="from_", default=None, metavar="CHECKPOINT", help="a GPT checkpoint to fine-tune")
    s.add_argument("--out", required=True, metavar="DIR", help="checkpoint directory (also holds loss.png)")
    s.add_argument("--resume", action="store_true", help="continue the run in --out")
    g = s.add_argument_group("data")
    g.add_argument("--n-train", type=positive_int, default=None, metavar="N",
                   help=f"skills: training conversations generated (default: {SKILLS_DATA['n_train']:,})")
    g.add_argument("--val-fraction", type=fraction, default=None, metavar="X",
                   help="a file: conversations held out for validation (default: 0.05)")
    g = s.add_argument_group("model (a fresh one, without --from)")
    for flag, key in (("--block-size", "block_size"), ("--n-layer", "n_layer"), ("--n-head", "n_head"),
                      ("--d-model", "d_model")):  # fmt: skip
        g.add_argument(flag, type=positive_int, default=None, metavar="N", help=f"(default: {SFT_MODEL[key]})")
    lora_flags(s)
    training_flags(s, {"sft": SFT_TRAIN, "sft --from": SFT_FROM_TRAIN}, "training")
    s.add_argument("--backend", choices=backends, default=None, help="hot-op implementation")
    s.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")

    c = sub.add_parser(
        "chat", help="talk to an instruction-tuned checkpoint",
        description="A multi-turn chat with a checkpoint trained by `sft` or `dpo`: answers stream as they are "
                    "decoded; /reset forgets the conversation, /exit (or end of input) quits. When standard "
                    "input is not a terminal, each non-empty input line is one user turn and each answer is "
                    "printed on one line (newlines in it as \\n); notes go to standard error.",
        formatter_class=formatter,
    )
    c.add_argument("--checkpoint", required=True, metavar="DIR", help="an sft or dpo checkpoint directory")
    c.add_argument("--system", default=None, metavar="TEXT", help="a system message at the start of the conversation")
    c.add_argument("--max-new-tokens", type=positive_int, default=64, metavar="N", help="longest answer")
    c.add_argument("--temperature", type=nonneg, default=0.0, metavar="X", help="0 = greedy")
    c.add_argument("--top-k", type=positive_int, default=None, metavar="K", help="sample from the k most likely tokens")
    c.add_argument("--top-p", type=top_p, default=None, metavar="P", help="nucleus sampling")
    c.add_argument("--seed", type=nonneg_int, default=0, metavar="N", help="sampling seed")
    c.add_argument("--backend", choices=backends, default=None, help="hot-op implementation")
    c.add_argument("--quantize", choices=QUANTIZE_KINDS, default=None,
                   help="decode with int8 weights (per-output-channel scales; see chapter 10)")

    d = sub.add_parser(
        "dpo", help="preference-tune an sft checkpoint (direct preference optimisation)",
        description="DPO (Rafailov et al. 2023) against the frozen starting model: raise the log-probability of "
                    "each chosen answer relative to the rejected one, measured against the reference. Prints "
                    "preference accuracy and exact match before and after.",
        formatter_class=formatter,
    )
    d.add_argument("data", metavar="DATA", help="'skills' (right answer vs a plausible wrong one) or a JSONL file of "
                                                '{"prompt": text or messages, "chosen": text, "rejected": text}')
    d.add_argument("--from", dest="from_", required=True, metavar="CHECKPOINT", help="the sft checkpoint")
    d.add_argument("--out", required=True, metavar="DIR", help="checkpoint directory")
    d.add_argument("--beta", type=positive, default=0.1, metavar="X", help="DPO's beta (strength of the KL anchor)")
    d.add_argument("--sft-weight", type=nonneg, default=1.0, metavar="X",
                   help="weight of the chosen answers' cross-entropy added to the loss (RPO; 0 = plain DPO)")
    d.add_argument("--rejected", choices=("model", "rule"), default=None,
                   help="skills: the rejected answer is the model's own wrong greedy answer where it errs, else a "
                        "plausible wrong one (model, the default), or always the plausible wrong one (rule)")
    d.add_argument("--n-train", type=positive_int, default=None, metavar="N",
                   help="skills: preference pairs (default: 3,000)")
    lora_flags(d)
    training_flags(d, {"dpo": DPO_TRAIN}, "training")
    d.add_argument("--backend", choices=backends, default=None, help="hot-op implementation")
    d.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")


DPO_TRAIN = dict(batch_size=16, max_steps=300, lr=3e-5, warmup=20, weight_decay=0.0, grad_clip=1.0,
                 eval_interval=100, eval_iters=5, seed=1337, beta1=0.9, beta2=0.99, eps=1e-8)  # fmt: skip


def lora_flags(p):
    from .cli_flags import positive, positive_int

    g = p.add_argument_group("LoRA (with --from: train low-rank adapters only; the base stays frozen)")
    g.add_argument("--lora-rank", type=positive_int, default=None, metavar="R", help="adapter rank r (default: no LoRA)")
    g.add_argument("--lora-alpha", type=positive, default=None, metavar="A", help="the adapters' scale is alpha / r (default: alpha = r, scale 1)")
    g.add_argument("--lora-targets", default=None, metavar="LIST",
                   help="comma-separated: attn (c_attn, c_proj), mlp (c_fc, c_proj) (default: attn,mlp)")


# ----------------------------------------------------------------------------- data


def sft_meta(args):
    """The data meta of a fresh sft run, from its flags."""
    if args.data == "skills":
        if args.val_fraction is not None:
            raise ValueError("--val-fraction: skills has its own held-out splits; the flag is for a file")
        return {"kind": "sft", "source": "skills", **SKILLS_DATA, "n_train": args.n_train or SKILLS_DATA["n_train"]}
    if args.n_train is not None:
        raise ValueError("--n-train: only for DATA 'skills' (a file is used whole)")
    path = Path(args.data)
    if not path.is_file():
        raise ValueError(f"{args.data}: no such file (expected 'skills', an Alpaca JSON file or a chat JSONL file)")
    frac = 0.05 if args.val_fraction is None else args.val_fraction
    return data_hashed({"kind": "sft", "source": str(path.resolve()), "val_fraction": frac, "seed": 0})


def sft_conversations(meta):
    """{"train": [messages], "val": [messages]} of a run's meta."""
    from .skills import load_instructions, skills_dataset

    if meta["source"] == "skills":
        return {"train": [e.messages for e in skills_dataset("train", meta["n_train"], meta["seed"])],
                "val": [e.messages for e in skills_dataset("val", meta["n_val"], meta["seed"])]}
    convs = load_instructions(meta["source"])
    if len(convs) < 2:
        raise ValueError(f"{meta['source']}: expected at least 2 conversations (one to train, one to validate), "
                         f"got {len(convs)}")
    perm = np.random.default_rng(meta["seed"]).permutation(len(convs))
    n_val = max(1, int(round(len(convs) * meta["val_fraction"])))
    return {"train": [convs[i] for i in perm[n_val:]], "val": [convs[i] for i in perm[:n_val]]}


def conversation_texts(convs):
    return [m["content"] for c in convs for m in c]


def sft_task(meta, tokenizer, block_size, convs=None):
    """The run's SFTTask (and its conversations, `sft_conversations(meta)` unless given)."""
    from .chat import END, sft_pair
    from .tasks import SFTTask

    convs = convs or sft_conversations(meta)
    pairs = {split: [sft_pair(tokenizer, c) for c in cs] for split, cs in convs.items()}
    name = "skills" if meta["source"] == "skills" else meta["source"]
    return SFTTask(pairs, block_size, tokenizer.special_tokens[END], source=name), convs


# ----------------------------------------------------------------------------- sft


def cmd_sft(args, out=print):
    from .chat import add_chat_tokens
    from .checkpoint import has_checkpoint, load_checkpoint, read_sidecar
    from .cli import fit_and_report, train_overrides, training_flags_named
    from .train import TrainConfig, Trainer

    out_dir = Path(args.out)
    if args.resume:
        sc = read_sidecar(out_dir)
        meta = sc.get("meta", {}).get("data") or {}
        if meta.get("kind") != "sft":
            raise ValueError(f"{out_dir}: --resume expected a checkpoint of an sft run, got one of {meta.get('kind')!r}")
        for name in ("from_", "n_train", "val_fraction", "block_size", "n_layer", "n_head", "d_model", "lora_rank",
                     "lora_alpha", "lora_targets"):  # fmt: skip
            if getattr(args, name) is not None:
                flag = "--from" if name == "from_" else "--" + name.replace("_", "-")
                raise ValueError(f"{flag}: not with --resume (the run in {out_dir} keeps its own data and model)")
        ran_on = meta["source"] if meta["source"] == "skills" else Path(meta["source"]).name
        given = args.data if args.data == "skills" else Path(args.data).name
        if (args.data == "skills") != (meta["source"] == "skills") or (args.data != "skills" and
                                                                        str(Path(args.data).resolve()) != meta["source"]):
            raise ValueError(f"DATA: the run in {out_dir} trained on {ran_on}, got {given}; resume it on the same data")
        check_data_unchanged(meta, out_dir)
        ckpt = load_checkpoint(out_dir, backend=args.backend)
        task, _ = sft_task(meta, ckpt.tokenizer, _gpt(ckpt.model).config.block_size)
        with training_flags_named():
            trainer = Trainer.from_checkpoint(ckpt, task, progress=not args.no_progress, overrides=train_overrides(args))
        out(f"resuming {out_dir} at step {trainer.step} of {trainer.config.max_steps}")
    else:
        meta = sft_meta(args)
        convs = sft_conversations(meta)
        defaults = SFT_TRAIN if args.from_ is None else SFT_FROM_TRAIN
        with training_flags_named():
            tcfg = TrainConfig(**{**defaults, **train_overrides(args)})
        if args.from_ is None:
            _reject_lora(args, "a fresh model (LoRA adapts a pretrained one: give --from)")
            model, tok = _fresh_chat_model(args, convs, tcfg.seed)
            what = f"a fresh character-level GPT, {model.num_params():,} parameters"
            task, _ = sft_task(meta, tok, model.config.block_size, convs)
        else:
            for name in ("block_size", "n_layer", "n_head", "d_model"):
                if getattr(args, name) is not None:
                    raise ValueError(f"--{name.replace('_', '-')}: not with --from (the checkpoint's model is fine-tuned "
                                     f"as it is)")
            src = Path(args.from_)
            kind = read_sidecar(src).get("kind", "gpt")
            if kind != "gpt":
                raise ValueError(f"--from: expected a GPT checkpoint, got a {kind!r} checkpoint in {src}")
            ckpt = load_checkpoint(src, backend=args.backend)
            if ckpt.tokenizer is None:
                raise ValueError(f"--from: the checkpoint {src} has no tokenizer")
            meta["from"] = str(src.resolve())
            try:
                tok, model = add_chat_tokens(ckpt.tokenizer, ckpt.model, conversation_texts(convs["train"] + convs["val"]))
            except ValueError as e:
                raise ValueError(f"--from: {src}'s character tokenizer has its chat tokens already and cannot take the "
                                 f"new characters of {args.data} ({e}); remove them from the data, or start --from a "
                                 f"checkpoint without chat tokens") from None
            what = f"the GPT of {src} (step {ckpt.step})"
            if model is not ckpt.model:
                what += f", vocabulary {ckpt.model.config.vocab_size} -> {model.config.vocab_size}"
            task, _ = sft_task(meta, tok, model.config.block_size, convs)  # the data fits, before anything is written
            model = maybe_lora(args, model, tok, src, model is not ckpt.model, out_dir, out)
        if has_checkpoint(out_dir):  # given --overwrite (cli.out_dir_claimed)
            out(f"note: {out_dir} holds a checkpoint; this run replaces it at its first evaluation (--overwrite)")
        trainer = Trainer(model, task, tcfg, tokenizer=tok, out_dir=out_dir, progress=not args.no_progress,
                          data_meta=meta)
        n = {k: len(v) for k, v in task.pairs.items()}
        dropped = sum(task.dropped.values())
        out(f"data: {task.source}, {n['train']:,} train / {n['val']:,} val conversations"
            + (f" ({dropped} longer than the block size left out)" if dropped else ""))
        out(f"model: {what}; {trained_params(model):,} parameters trained; {tcfg.max_steps} steps of {tcfg.batch_size} "
            f"rows x {_gpt(model).config.block_size} tokens")
    if fit_and_report(trainer, SimpleNamespace(kind="sft"), args, out_dir, out, 0) and meta["source"] == "skills":
        skills_report(trainer.model, trainer.tokenizer, out, per_skill=50)


def _gpt(model):
    """The GPT inside a model (itself, a classifier's body, or a LoRA's)."""
    return getattr(model, "gpt", model)


def trained_params(model):
    return int(model.params.size - model.frozen)


def _fresh_chat_model(args, convs, seed):
    from .chat import CHAT_TOKENS
    from .model import GPT, GPTConfig
    from .tokenizer import CharTokenizer

    text = "".join(conversation_texts(convs["train"] + convs["val"]))
    tok = CharTokenizer(text, special_tokens=CHAT_TOKENS)
    kw = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in SFT_MODEL.items() if k != "dropout"}
    from .cli_tasks import config_errors_name_flags

    with config_errors_name_flags("gpt", args):
        cfg = GPTConfig(vocab_size=tok.vocab_size, backend=args.backend, **kw)
    return GPT(cfg, seed=seed), tok


def _reject_lora(args, why):
    for name in ("lora_rank", "lora_alpha", "lora_targets"):
        if getattr(args, name, None) is not None:
            raise ValueError(f"--{name.replace('_', '-')}: not for {why}")


def maybe_lora(args, model, tok, src, new_base, out_dir, out, why=None):
    """model, or a LoRA of it when --lora-rank is given. Its base is the checkpoint src, or, when the
    model differs from it (new_base: the vocabulary grew, or a classifier's new head), the model
    itself saved to out_dir/base-<hash of its parameters> (a note says so; `why` says what
    changed). The LoRA is built (its flags checked) before anything is written, and the base
    directory is named by its content: a run never rewrites the base of adapters already in
    out_dir, and the same base is written once however often it is trained on."""
    if args.lora_rank is None:
        _reject_lora(args, "full fine-tuning (give --lora-rank too)")
        return model
    import hashlib

    from .checkpoint import has_checkpoint, save_checkpoint
    from .distributed import world
    from .lora import LoRA

    targets = tuple((args.lora_targets or "attn,mlp").split(","))
    try:
        lora = LoRA(model, rank=args.lora_rank, alpha=args.lora_alpha, targets=targets)
    except ValueError as e:
        raise ValueError(f"--lora-targets/--lora-rank: {e}") from None
    base_dir = src
    if new_base:  # e.g. the new token rows are part of the frozen base: save that base beside the adapters
        why = why or "the chat tokens grew the vocabulary"
        digest = hashlib.sha256(model.params.tobytes() + repr(sorted(model.config_dict().items())).encode())
        base_dir = out_dir / f"base-{digest.hexdigest()[:12]}"
        w = world()
        if w.is_root and not has_checkpoint(base_dir):  # rank 0 alone writes (an `mpirun` job) ...
            save_checkpoint(base_dir, model, tokenizer=tok, meta={"note": f"{src}: {why}"})
        w.exchange("the LoRA base", None)  # ... and the others wait until it has
        out(f"note: {why}; the frozen base is saved in {base_dir}")
    return lora.attach_base_checkpoint(base_dir)


# ----------------------------------------------------------------------------- eval skills, chat


def chat_model(ckpt, where):
    """The GPT to chat with from a checkpoint (a LoRA's adapters merged into its base)."""
    from .lora import inference_model

    model = inference_model(ckpt.model)
    if model.kind != "gpt":
        raise ValueError(f"{where}: expected a GPT (sft or dpo) checkpoint, got a {model.kind!r} checkpoint")
    from .chat import chat_ids

    try:
        chat_ids(ckpt.tokenizer)
    except ValueError:
        raise ValueError(f"{where}: the checkpoint's tokenizer has no chat tokens; train it with "
                         f"`nanotransformer sft` first") from None
    return model


def skills_scores(model, tokenizer, per_skill=EVAL_PER_SKILL, seed=0):
    """Exact match per skill on the held-out test split -> {skill: (correct, n)}."""
    from .chat import answer
    from .skills import SKILLS, skills_dataset

    scores = {s: [0, 0] for s in SKILLS}
    for ex in skills_dataset("test", per_skill * len(SKILLS), seed=seed, multi_turn=0.0):
        got = answer(model, tokenizer, list(ex.prompt), max_new_tokens=len(tokenizer.encode_ordinary(ex.answer)) + 8)
        scores[ex.skill][0] += got.strip() == ex.answer
        scores[ex.skill][1] += 1
    return {s: tuple(v) for s, v in scores.items() if v[1]}


def skills_report(model, tokenizer, out, per_skill=EVAL_PER_SKILL):
    from .lora import inference_model

    scores = skills_scores(inference_model(model), tokenizer, per_skill)
    parts = [f"{s} {c / n:.0%}" for s, (c, n) in scores.items()]
    total = sum(c for c, _ in scores.values()) / sum(n for _, n in scores.values())
    out(f"exact match on held-out skills ({per_skill} per skill): " + ", ".join(parts) + f"; overall {total:.1%}")
    return scores


def cmd_chat(args, out=print, stdin=None):
    from .chat import ChatSession
    from .checkpoint import load_checkpoint

    stdin = stdin or sys.stdin
    ckpt = load_checkpoint(args.checkpoint, backend=args.backend)
    model = chat_model(ckpt, args.checkpoint)
    if args.quantize:
        model = quantize_model(model, args.quantize)
    session = ChatSession(model, ckpt.tokenizer, system=args.system, max_new_tokens=args.max_new_tokens,
                          temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    tty = stdin.isatty()
    if tty:
        out(f"chatting with {args.checkpoint} (step {ckpt.step}); /reset forgets, /exit quits")
    while True:
        if tty:
            print("you> ", end="", flush=True)
        line = stdin.readline()
        if not line:
            break
        text = line.rstrip("\n")
        if text.strip() == "/exit":
            break
        if text.strip() == "/reset":
            session.reset()
            if tty:
                out("(conversation forgotten)")
            continue
        if not text.strip():
            continue
        if tty:
            print("assistant> ", end="", flush=True)
            answer, notes = session.reply(text, on_text=lambda s: print(s, end="", flush=True))
            print()
        else:
            answer, notes = session.reply(text)
            out(answer.replace("\n", "\\n"))
        for note in notes:
            print(note, file=sys.stderr)


# ----------------------------------------------------------------------------- dpo


def dpo_splits(args):
    """(meta, {"train": triples, "val": triples}) of a dpo run's DATA."""
    from .dpo import load_preferences
    from .skills import preference_pairs

    if args.data == "skills":
        args.n_train = args.n_train or 3000
        meta = {"kind": "dpo", "source": "skills", "n_train": args.n_train, "n_val": 500, "seed": 0,
                "rejected": args.rejected or "model"}
        return meta, {split: [(p, c, r) for p, c, r, _ in preference_pairs(split, n, seed=0)]
                      for split, n in (("train", args.n_train), ("val", 500))}
    if args.n_train is not None:
        raise ValueError("--n-train: only for DATA 'skills' (a file is used whole)")
    triples = load_preferences(args.data)
    if len(triples) < 2:
        raise ValueError(f"{args.data}: expected at least 2 preference pairs (one to train, one to validate)")
    perm = np.random.default_rng(0).permutation(len(triples))
    n_val = max(1, len(triples) // 20)
    meta = {"kind": "dpo", "source": str(Path(args.data).resolve()), "seed": 0}
    return meta, {"train": [triples[i] for i in perm[n_val:]], "val": [triples[i] for i in perm[:n_val]]}


def cmd_dpo(args, out=print):
    from .checkpoint import has_checkpoint, load_checkpoint, read_sidecar
    from .cli import fit_and_report, train_overrides, training_flags_named
    from .distributed import world
    from .dpo import DPO, PreferenceTask, preference_accuracy
    from .train import TrainConfig, Trainer

    src, out_dir = Path(args.from_), Path(args.out)
    if args.data != "skills" and args.rejected is not None:
        raise ValueError("--rejected: only for DATA 'skills' (a file gives its rejected answers)")
    if args.stop_after is not None:
        raise ValueError("--stop-after: dpo runs whole (it has no --resume: its reference log-probabilities come "
                         "from the starting checkpoint)")
    meta, splits = dpo_splits(args)
    if read_sidecar(src).get("kind") == "lora":  # checked before the minutes of work below
        _reject_lora(args, "a LoRA checkpoint (its own adapters are trained)")
    ckpt = load_checkpoint(src, backend=args.backend)
    model, tok = chat_model(ckpt, src), ckpt.tokenizer  # the reference: the starting model, before any step
    meta["from"] = str(src.resolve())
    if args.data == "skills" and args.rejected != "rule":
        from .dpo import with_model_mistakes

        for split in splits:
            splits[split], n = with_model_mistakes(model, tok, splits[split])
            out(f"{split}: the model's own wrong answer is the rejected one in {n:,} of {len(splits[split]):,} pairs")
    task = PreferenceTask(splits, tok, model, source=meta["source"])
    skills = meta["source"] == "skills"
    n = {k: len(v[0]) for k, v in task.data.items()}
    dropped = sum(task.dropped.values())
    out(f"data: {task.source}, {n['train']:,} train / {n['val']:,} val preference pairs"
        + (f" ({dropped} longer than the block size left out)" if dropped else ""))
    before = None
    if world().is_root:  # the before and after reports are rank 0's alone (training is every rank's)
        acc0, _, _ = preference_accuracy(model, task, beta=args.beta)
        out(f"before: the model prefers the chosen answer in {acc0:.1%} of val pairs (log pi(chosen) > "
            "log pi(rejected))")
        before = skills_report(model, tok, out, per_skill=50) if skills else None
    if ckpt.model.kind == "lora":  # keep training a LoRA's adapters: merge nothing into the reference copy
        model = load_checkpoint(src, backend=args.backend).model
    else:
        model = maybe_lora(args, model, tok, src, False, out_dir, out)
    with training_flags_named():
        tcfg = TrainConfig(**{**DPO_TRAIN, **train_overrides(args)})
    if has_checkpoint(out_dir):  # given --overwrite (cli.out_dir_claimed)
        out(f"note: {out_dir} holds a checkpoint; this run replaces it at its first evaluation (--overwrite)")
    trainer = Trainer(DPO(model, args.beta, args.sft_weight), task, tcfg, tokenizer=tok, out_dir=out_dir,
                      progress=not args.no_progress, data_meta=meta)
    out(f"model: {src} (step {ckpt.step}), {trained_params(model):,} parameters trained, beta {args.beta}, "
        f"sft weight {args.sft_weight}; "
        f"{tcfg.max_steps} steps of {tcfg.batch_size} pairs")
    if not fit_and_report(trainer, SimpleNamespace(kind="dpo"), args, out_dir, out, 0):
        return
    from .lora import inference_model

    policy = inference_model(model)
    acc1, margin_acc, z = preference_accuracy(policy, task, beta=args.beta)
    out(f"after: the model prefers the chosen answer in {acc1:.1%} of val pairs; DPO margin positive in "
        f"{margin_acc:.1%} (mean margin {z:.2f})")
    if before is not None:
        skills_report(policy, tok, out, per_skill=50)
