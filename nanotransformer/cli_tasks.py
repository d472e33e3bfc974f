"""The per-kind half of the `nanotransformer` command: for each model kind, how DATA becomes the
task `train.Trainer` trains on, how the flags become a model, and what is printed at the end of
a training run and by `eval`. `cli.py` parses the flags and runs the commands; everything that
differs between a GPT, a BERT, the encoder-decoder and the fine-tuned classifier is here.

    kind        DATA                                      task (tasks.py)     end of train / eval
    gpt         text file, directory, alice, tinyshak..   (TokenData)         a sample / perplexity
    bert        the same texts; vocabulary char_vocab     MaskedLMTask        fill-mask / masked-LM loss
    seq2seq     numbers, or a source<TAB>target TSV file  TranslationTask     exact match + BLEU
    classifier  a sentiment TSV file or directory         ClassificationTask  accuracy + F1 vs a baseline

Every run is built from its data meta (a JSON dict saved in the checkpoint) and only from it: a
fresh run first turns its flags into the meta, then builds the task from the meta, exactly as
`--resume` and `eval` later do. So a resumed run sees the same examples in the same splits:
the meta names the source (an absolute path or a built-in name), the split fractions and seeds,
and the sizes and seeds of the generated numbers task.

Dimension legend: B batch, T block size (max_len for seq2seq), N examples.

Does not: parse flags or print errors (cli.py does), or hold any model or task code (the package
modules do).
"""
import contextlib
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from .data import check_data_unchanged, data_hashed

KINDS = ("gpt", "bert", "seq2seq")  # what `train --model` builds; `finetune` builds "classifier"

# defaults sized so that with no flags `train` takes about 30 s (gpt) or 20 s (bert, seq2seq) on 2
# idle cores (measured; a busy machine takes several times longer)
MODEL_DEFAULTS = {
    "gpt": dict(block_size=64, n_layer=4, n_head=4, d_model=128, dropout=0.0),
    # a short context: BERT's masked-LM loss sits at the unigram level until attention learns to
    # read the neighbours, which at T=16 happens within ~500 steps and at T=32 only after ~1000
    "bert": dict(block_size=16, n_layer=2, n_head=4, d_model=64, dropout=0.0),
    # block_size None: max_len just long enough for DATA's longest pair, rounded up to 8
    "seq2seq": dict(block_size=None, n_layer=2, n_head=4, d_model=64, dropout=0.0, label_smoothing=0.1),
}
_ADAMW = dict(beta1=0.9, beta2=0.99, eps=1e-8)  # train.TrainConfig's
TRAIN_DEFAULTS = {
    "gpt": dict(batch_size=16, max_steps=500, lr=3e-3, warmup=50, weight_decay=0.1, grad_clip=1.0,
                eval_interval=100, eval_iters=10, seed=1337, **_ADAMW),
    "bert": dict(batch_size=64, max_steps=1000, lr=3e-3, warmup=50, weight_decay=0.01, grad_clip=1.0,
                 eval_interval=200, eval_iters=5, seed=1337, **_ADAMW),
    "seq2seq": dict(batch_size=64, max_steps=1000, lr=3e-3, warmup=100, weight_decay=0.01, grad_clip=1.0,
                    eval_interval=200, eval_iters=5, seed=1337, **_ADAMW),
    "classifier": dict(batch_size=32, max_steps=300, lr=3e-4, warmup=30, weight_decay=0.01, grad_clip=1.0,
                       eval_interval=100, eval_iters=5, seed=1337, **_ADAMW),
}
# the built-in number-to-words task: numbers below a million, validation numbers never trained on
NUMBERS = dict(n_train=10_000, n_val=500, max_number=10**6, seed=0, val_seed=1)
SPLIT_SEED = 0  # the random train/val split of a TSV file's pairs
# train flags that only some kinds take (every other model/training flag applies to all)
# the GPT's architecture: --arch picks a preset (model.ARCHS), these flags override its switches
GPT_SWITCHES = ("pos", "norm", "mlp", "n_kv_head", "d_ff", "rope_theta", "bias", "tie_embeddings", "qk_norm")
ONLY_FOR = {"tokenizer": ("gpt",), "vocab_size": ("gpt",), "arch": ("gpt",), **{d: ("gpt",) for d in GPT_SWITCHES},
            "label_smoothing": ("seq2seq",)}
# model flag -> the key of the checkpoint's config it must match on --resume
CONFIG_KEYS = {
    "gpt": dict(block_size="block_size", n_layer="n_layer", n_head="n_head", d_model="d_model", dropout="dropout",
                vocab_size="vocab_size", **{d: d for d in GPT_SWITCHES}),
    "bert": dict(block_size="block_size", n_layer="n_layer", n_head="n_head", d_model="d_model", dropout="dropout"),
    "seq2seq": dict(block_size="max_len", n_layer="n_enc_layer", n_head="n_head", d_model="d_model",
                    dropout="dropout", label_smoothing="label_smoothing"),
}
CONFIG_KEYS["classifier"] = CONFIG_KEYS["gpt"]  # checked against the GPT body's config


def flag(dest):
    return "--" + dest.replace("_", "-")


@contextlib.contextmanager
def config_errors_name_flags(kind, args=None):
    """A model config's ValueError "field: ..." re-raised as "--flag: ..." for the flag that set
    the field (the config validates; the user typed a flag): "--arch llama (pos='rope'): ..." when
    the field was set by the --arch preset and not by its own flag."""
    try:
        yield
    except ValueError as e:
        field, sep, rest = str(e).partition(":")
        dest = {key: dest for dest, key in CONFIG_KEYS[kind].items()}.get(field)
        if not sep or dest is None:
            raise
        arch = getattr(args, "arch", None)
        if arch is not None and getattr(args, dest, None) is None and dest in GPT_SWITCHES:
            from .model import ARCHS

            if dest in ARCHS[arch]:
                raise ValueError(f"--arch {arch} (which sets {dest}={ARCHS[arch][dest]!r}):{rest}") from None
        raise ValueError(f"{flag(dest)}:{rest}") from None


def reject_flags(args, dests, where):
    """ValueError naming the first flag of `dests` that was given: it does not apply to `where`."""
    for d in dests:
        if getattr(args, d, None) is not None:
            raise ValueError(f"{flag(d)}: does not apply to {where}")


def source_name(data, default):
    """DATA as saved in the meta: a path made absolute (so --resume finds it from any directory),
    else the built-in name."""
    source = data or default
    return str(Path(source).resolve()) if Path(source).exists() else source


def encode_text(tok, text, name):
    """A text -> ids (N,) int64 with a GPT tokenizer or a `tasks.Vocab` (one token per character)."""
    from .tasks import Vocab

    try:
        return np.asarray(tok.encode(list(text)) if isinstance(tok, Vocab) else tok.encode(text), dtype=np.int64)
    except ValueError as e:
        raise ValueError(f"{name}: cannot be encoded with this tokenizer ({e})") from None


# ----------------------------------------------------------------------------- DATA -> task, per kind


def text_run(kind, meta, tokenizer=None):
    """gpt, bert: the text of meta["source"] as a TokenData stream (a masked-LM task for BERT).
    tokenizer None: built from the text (meta["tokenizer"] for a GPT, `char_vocab` for BERT)."""
    from .data import TokenData, build_tokenizer, load_text
    from .tasks import char_vocab

    text, name = load_text(meta["source"])
    if tokenizer is None:
        tokenizer = char_vocab(text) if kind == "bert" else build_tokenizer(text, meta["tokenizer"], meta.get("vocab_size"))
    stream = TokenData(encode_text(tokenizer, text, name), meta.get("val_fraction", 0.1), name)
    return SimpleNamespace(kind=kind, meta=meta, tokenizer=tokenizer, stream=stream, task=stream, text=text, name=name)


def pairs_meta(data, val_fraction):
    """seq2seq: DATA ('numbers' or a TSV file) and --val-fraction -> the meta of its pairs."""
    if (data is None or data == "numbers") and not Path("numbers").exists():
        if val_fraction is not None:
            raise ValueError(f"--val-fraction: does not apply to the numbers task (its {NUMBERS['n_val']} validation "
                             "numbers are drawn apart from the training ones)")
        return {"kind": "numbers", "source": "numbers", **NUMBERS}
    vf = 0.1 if val_fraction is None else val_fraction  # a fraction in (0, 1): cli_flags.fraction
    return {"kind": "tsv", "source": source_name(data, None), "val_fraction": vf, "split_seed": SPLIT_SEED}


def pairs_run(meta, vocab=None):
    """seq2seq: the train and val pairs of `meta` as a TranslationTask. vocab None: built from the
    pairs (numbers_vocab, or the TSV's characters); else every token must be in it."""
    from .tasks import TranslationTask, Vocab, numbers_dataset, numbers_vocab, read_pairs_tsv, split_indices

    if meta.get("kind") not in ("numbers", "tsv"):
        raise ValueError(f"data: expected the pairs' kind 'numbers' or 'tsv' in the checkpoint's meta, got {meta.get('kind')!r}")
    if meta["kind"] == "numbers":
        train, nums = numbers_dataset(meta["n_train"], meta["max_number"], meta["seed"])
        val, _ = numbers_dataset(meta["n_val"], meta["max_number"], meta["val_seed"], exclude=nums)
        name, pairs, vocab = "numbers", train + val, vocab or numbers_vocab()
    else:
        name = meta["source"]
        pairs = read_pairs_tsv(name)
        tr, _, va = split_indices(len(pairs), test_frac=meta["val_fraction"], seed=meta["split_seed"])
        if len(tr) == 0 or len(va) == 0:
            raise ValueError(f"{name}: {len(pairs)} pair(s) are too few to hold out --val-fraction "
                             f"{meta['val_fraction']} of them and train on the rest")
        train, val = [pairs[i] for i in tr], [pairs[i] for i in va]
        vocab = vocab or Vocab(sorted({c for s, t in pairs for c in s + t}))
    check_pairs(pairs, vocab, None, name)
    task = TranslationTask(vocab, train, val, source=name)
    return SimpleNamespace(kind="seq2seq", meta=meta, tokenizer=vocab, task=task, name=name, pairs=pairs)


def pairs_positions(pairs):
    """Positions the longest pair needs: its source, or its target + [EOS] (and [BOS] + target)."""
    return max(max(len(s) for s, _ in pairs), max(len(t) for _, t in pairs) + 1)


def check_pairs(pairs, vocab, max_len, name):
    for side, k in (("source", 0), ("target", 1)):
        bad = next((t for p in pairs for t in p[k] if t not in vocab.stoi), None)
        if bad is not None:
            raise ValueError(f"{name}: cannot be encoded with the checkpoint's vocabulary ({side} token {bad!r} "
                             f"is not among its {len(vocab)} tokens)")
    if max_len is not None and pairs_positions(pairs) > max_len:
        raise ValueError(f"{name}: its longest pair needs {pairs_positions(pairs)} positions, more than the "
                         f"model's max_len {max_len}")


def sentiment_meta(data, args):
    """classifier: DATA and finetune's split flags -> the meta of its sentences."""
    tf, vf = args.test_fraction, args.val_fraction  # each a fraction in (0, 1): cli_flags.fraction
    if tf + vf >= 1.0:
        raise ValueError(f"--test-fraction, --val-fraction: expected a sum below 1, got {tf} + {vf}")
    return data_hashed({"kind": "sentiment", "source": source_name(data, None), "test_fraction": tf,
                       "val_fraction": vf, "split_seed": args.split_seed})


def sentiment_run(meta, tokenizer, block_size):
    """classifier: labelled sentences, encoded with the GPT's tokenizer (cut to block_size tokens,
    characters it cannot encode dropped with a warning), split train / val / test by seed."""
    from .tasks import ClassificationTask, encode_sentences, load_sentiment, split_indices

    name = meta["source"]
    sentences, labels = load_sentiment(name)
    tr, va, te = split_indices(len(sentences), meta["test_fraction"], meta["val_fraction"], meta["split_seed"])
    if min(len(tr), len(va), len(te)) == 0:
        raise ValueError(f"{name}: {len(sentences)} sentence(s) are too few for a train, a validation and a test split")
    try:
        ids, lengths = encode_sentences(tokenizer, known_characters(tokenizer, sentences, name), block_size)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None
    task = ClassificationTask(ids, lengths, labels, {"train": tr, "val": va}, source=name)
    return SimpleNamespace(kind="classifier", meta=meta, tokenizer=tokenizer, task=task, name=name, sentences=sentences,
                           labels=labels, ids=ids, lengths=lengths, train=tr, val=va, test=te)


def known_characters(tokenizer, sentences, name):
    """The sentences with each character `tokenizer` cannot encode (a character-level GPT knows
    only its training text's characters) replaced by "?" (or " ", or dropped if neither encodes),
    like an unknown token; warns with a count and examples if any were replaced."""
    ok, unknown, out = {}, {}, []

    def known(c):
        if c not in ok:
            try:
                ok[c] = bool(tokenizer.encode(c))
            except ValueError:
                ok[c] = False
        return ok[c]

    sub = next((c for c in "? " if known(c)), "")
    for s in sentences:
        try:
            tokenizer.encode(s)
            out.append(s)
            continue
        except ValueError:
            pass
        for c in s:
            if not known(c):
                unknown[c] = unknown.get(c, 0) + 1
        out.append("".join(c if ok[c] else sub for c in s))
    if unknown:
        top = ", ".join(repr(c) for c, _ in sorted(unknown.items(), key=lambda kv: -kv[1])[:5])
        by = f"by {sub!r}" if sub else "(dropped)"
        warnings.warn(f"{name}: replaced {sum(unknown.values()):,} characters the checkpoint's tokenizer cannot "
                      f"encode {by} ({len(unknown)} distinct, e.g. {top})")
    return out


def load_run(kind, meta, tokenizer=None, config=None):
    """The run (task, tokenizer, ...) of `kind` described by `meta`, e.g. a checkpoint's."""
    if kind in ("gpt", "bert"):
        return text_run(kind, meta, tokenizer)
    if kind == "seq2seq":
        return pairs_run(meta, tokenizer)
    return sentiment_run(meta, tokenizer, config["gpt"]["block_size"])


def resume_run(ckpt, data=None):
    """The run a checkpoint was trained on; `data` (DATA given with --resume) replaces its source."""
    kind = ckpt.model.kind
    if ckpt.tokenizer is None:
        raise ValueError(f"{ckpt.path}: the checkpoint has no tokenizer, so its data cannot be encoded to resume it")
    meta = dict(ckpt.meta.get("data") or {})
    if data is not None:
        if kind == "seq2seq" and (meta.get("kind") == "numbers") != (pairs_meta(data, None)["kind"] == "numbers"):
            raise ValueError(f"DATA: cannot change the task when resuming (the checkpoint was trained on "
                             f"{meta.get('source')!r}, got {data!r})")
        meta["source"] = source_name(data, None)
    if kind in ("gpt", "bert"):
        meta.setdefault("source", "alice")
    elif "source" not in meta:
        raise ValueError(f"{ckpt.path}: the checkpoint does not record its data; give DATA to resume it")
    check_data_unchanged(meta, ckpt.path)
    run = load_run(kind, meta, ckpt.tokenizer, ckpt.model.config_dict())
    if kind == "bert":
        run.task = masked_task(run, ckpt.model.config.block_size)
    return run


def masked_task(run, block_size):
    from .tasks import MaskedLMTask

    run.stream.check_block_size(block_size)
    return MaskedLMTask(len(run.tokenizer), block_size, data=run.stream)


# ----------------------------------------------------------------------------- flags -> a new run


def new_run(kind, args, seed):
    """train (not --resume): the model and the run of `kind` from the flags -> (model, run)."""
    from .bert import BERT, BERTConfig
    from .encoder_decoder import Seq2Seq, Seq2SeqConfig
    from .model import GPT, GPTConfig

    vals = {k: (d if getattr(args, k) is None else getattr(args, k)) for k, d in MODEL_DEFAULTS[kind].items()}
    T = vals.pop("block_size")
    if kind in ("gpt", "bert"):
        meta = {"source": source_name(args.data, "alice"), "tokenizer": args.tokenizer or "char",
                "val_fraction": 0.1 if args.val_fraction is None else args.val_fraction}
        if kind == "bert":
            meta = {"kind": "text", "source": meta["source"], "val_fraction": meta["val_fraction"]}
        elif args.vocab_size is not None:
            if meta["tokenizer"] != "bpe":
                raise ValueError(f"--vocab-size: only for --tokenizer bpe (a {meta['tokenizer']!r} tokenizer's "
                                 "vocabulary is fixed by what it reads)")
            meta["vocab_size"] = args.vocab_size
        run = text_run(kind, data_hashed(meta))
        V = run.tokenizer.vocab_size
        if kind == "gpt":
            switches = {d: getattr(args, d) for d in GPT_SWITCHES if getattr(args, d) is not None}
            with config_errors_name_flags("gpt", args):
                cfg = GPTConfig.preset(args.arch or "gpt2", vocab_size=V, block_size=T, backend=args.backend, **vals, **switches)
            run.stream.check_block_size(T)  # before the model: a block longer than the data is refused at once
            model = GPT(cfg, seed=seed)
        else:
            with config_errors_name_flags("bert"):
                cfg = BERTConfig(vocab_size=V, block_size=T, backend=args.backend, **vals)
            run.task = masked_task(run, T)
            model = BERT(cfg, seed=seed)
        return model, run
    run = pairs_run(data_hashed(pairs_meta(args.data, args.val_fraction)))
    need = pairs_positions(run.pairs)
    if T is None:
        T = -(-need // 8) * 8
    elif T < need:
        raise ValueError(f"--block-size: the encoder-decoder's max_len {T} is too short for {run.name}: its longest "
                         f"pair needs {need} positions (the source, or the target + EOS); use at least {need}")
    ls = vals.pop("label_smoothing")
    L = vals.pop("n_layer")
    with config_errors_name_flags("seq2seq"):
        cfg = Seq2SeqConfig(vocab_size=len(run.tokenizer), max_len=T, n_enc_layer=L, n_dec_layer=L, label_smoothing=ls,
                            backend=args.backend, **vals)
    return Seq2Seq(cfg, seed=seed), run


def check_resume_flags(args, kind, sidecar, out_dir):
    """Every model flag given with --resume must match the checkpoint's config, every data flag its
    meta; a flag the kind does not take is an error."""
    cfg = sidecar["config"]["gpt"] if kind == "classifier" else sidecar["config"]
    meta = (sidecar.get("meta") or {}).get("data") or {}
    given_flags = [(dest, key, getattr(args, dest)) for dest, key in CONFIG_KEYS[kind].items()]
    if kind in ("gpt", "classifier"):
        from .model import GPTConfig

        cfg = GPTConfig.from_dict(cfg).to_dict()  # a checkpoint older than a switch has its default
    if kind in ("gpt", "classifier") and getattr(args, "arch", None) is not None:
        from .model import arch_switches

        # the preset's switches, except those a flag of this command overrides (checked above)
        given_flags += [("arch", key, val) for key, val in arch_switches(args.arch, cfg["n_head"]).items()
                        if getattr(args, key, None) is None]
    for dest, key, given in given_flags:
        if given is None or dest == "vocab_size":  # a tokenizer flag, checked against the meta below
            continue
        have = cfg.get(key)
        if given != have or (kind == "seq2seq" and dest == "n_layer" and given != cfg.get("n_dec_layer")):
            what = f" {args.arch} sets {key}" if dest == "arch" else ""
            raise ValueError(f"{flag(dest)}: cannot change the model when resuming (the checkpoint in {out_dir} "
                             f"has {key}={have!r},{what or ' got'} {given!r})")
    reject_flags(args, [d for d, kinds in ONLY_FOR.items() if kind not in kinds and d not in CONFIG_KEYS[kind]],
                 f"a {kind} checkpoint")
    for dest in ("tokenizer", "vocab_size", "val_fraction"):
        given = getattr(args, dest, None)
        if given is None:
            continue
        if dest == "vocab_size" and meta.get("tokenizer") == "bpe" and dest not in meta:
            from .data import DEFAULT_BPE_VOCAB

            meta = {**meta, "vocab_size": DEFAULT_BPE_VOCAB}  # a bpe run that did not give --vocab-size
        if dest not in meta:
            raise ValueError(f"{flag(dest)}: does not apply to the data of this {kind} checkpoint")
        if given != meta[dest]:
            raise ValueError(f"{flag(dest)}: cannot change the data when resuming "
                             f"(the checkpoint in {out_dir} has {meta[dest]!r}, got {given!r})")


def describe(run, model, tcfg):
    """The 'data: ...' and 'model: ...' lines of a new run."""
    c, n, be = model.config, model.num_params(), model.ops.name
    steps = f"training {tcfg.max_steps} steps of {tcfg.batch_size}"
    if run.kind == "seq2seq":
        t = run.task.pairs
        return (f"data: {run.name}, {len(t['train']):,} train / {len(t['val']):,} val pairs (vocab {len(run.tokenizer)})",
                f"model: encoder-decoder, {n:,} parameters (L={c.n_enc_layer}+{c.n_dec_layer}, NH={c.n_head}, "
                f"C={c.d_model}, max_len={c.max_len}, label smoothing {c.label_smoothing}, backend {be}); "
                f"{steps} pairs")
    s = run.stream
    data = (f"data: {run.name}, {len(run.text):,} characters -> {len(s):,} tokens (vocab {run.tokenizer.vocab_size}), "
            f"{len(s.split['train']):,} train / {len(s.split['val']):,} val")
    if run.kind == "bert":
        return data, (f"model: BERT, {n:,} parameters (L={c.n_layer}, NH={c.n_head}, C={c.d_model}, T={c.block_size}, "
                      f"backend {be}); {steps}x{c.block_size} tokens, 15% masked")
    arch = (f"{c.norm}, {c.pos} positions, {c.mlp}" + (f", NKV={c.n_kv_head}" if c.n_kv_head != c.n_head else "")
            + ("" if c.tie_embeddings else ", untied head") + (", QK-norm" if c.qk_norm else "")
            + ("" if c.bias else ", no biases"))
    return data, (f"model: {n:,} parameters (L={c.n_layer}, NH={c.n_head}, C={c.d_model}, T={c.block_size}; "
                  f"{arch}; backend {be}); {steps}x{c.block_size} tokens")


# ----------------------------------------------------------------------------- end of a train run


def report(run, model, tokenizer, sample_tokens, out):
    """What a finished run prints: a GPT sample, a BERT fill-mask, seq2seq exact match + BLEU,
    the classifier's test accuracy and F1 next to the bag-of-words baseline."""
    if run.kind == "gpt" and sample_tokens:
        from .generation import generate

        prompt = default_prompt(tokenizer)
        text = generate(model, tokenizer, prompt, sample_tokens, temperature=0.8, seed=0)[0]
        out("sample (temperature 0.8):")
        out(prompt + text)
    elif run.kind == "bert" and sample_tokens:
        for line in fill_mask_example(model, tokenizer, run.stream):
            out(line)
    elif run.kind == "seq2seq":
        from .encoder_decoder import evaluate_seq2seq

        val = run.task.pairs["val"]
        r = evaluate_seq2seq(model, val, tokenizer)
        out(f"val: exact match {r['exact_match']:.1%}, BLEU {r['bleu']:.1f} (greedy decoding of {len(val):,} "
            f"held-out pairs)")
        for (s, t), o in list(zip(val, r["outputs"]))[: 2 if sample_tokens else 0]:
            out(f"  {join(s)} -> {join(o)}" + ("" if o == t else f"   (expected: {join(t)})"))
    elif run.kind == "classifier":
        from .finetuning import BowLogisticRegression
        from .metrics import accuracy, f1_score

        te, tr, y = run.test, run.train, run.labels
        pred = model.predict(run.ids[te], run.lengths[te])
        bow = BowLogisticRegression().fit([run.sentences[i] for i in tr], y[tr])
        base = bow.predict([run.sentences[i] for i in te])
        clf = model.base if model.kind == "lora" else model
        blocks = ("all weights" if clf.train_blocks is None else f"last {clf.train_blocks} block(s) + head") \
            if model.kind != "lora" else f"LoRA r={model.rank} + head"  # fmt: skip
        rows = [(f"fine-tuned GPT ({blocks}, {clf.pool}-token pooling)", pred), ("bag-of-words logistic regression", base)]
        out(f"test split ({len(te):,} held-out sentences; {len(tr):,} trained on):")
        for what, p in rows:
            out(f"  {what:<50} accuracy {accuracy(y[te], p):.3f}  F1 {f1_score(y[te], p):.3f}")


def join(tokens):
    """Tokens -> text: characters side by side, words (the numbers task's targets) with spaces."""
    return "".join(tokens) if all(len(t) == 1 for t in tokens) else " ".join(tokens)


def default_prompt(tok):
    """A newline if the tokenizer can encode it (a natural start of text), else its first token."""
    try:
        if tok.encode("\n"):
            return "\n"
    except ValueError:
        pass
    return tok.decode([0])


def fill_mask_example(model, vocab, stream):
    """A line of the validation text with every 4th letter hidden, and BERT's filling of it."""
    from .bert import fill_mask

    T = model.config.block_size
    val = "".join(vocab.decode(stream.split["val"][:20_000]))
    lines = [ln.strip() for ln in val.split("\n")[1:]]
    snippet = next((ln[: T - 1] for ln in lines if len(ln) >= T - 1 and "_" not in ln), None)
    snippet = snippet or val.replace("\n", " ").replace("_", " ")[: T - 1]
    hidden = [i for i, c in enumerate(snippet) if c.isalnum()][1::4]
    if not hidden:
        return []
    blanked = "".join("_" if i in hidden else c for i, c in enumerate(snippet))
    filled = list(blanked)
    for pos, cands in fill_mask(model, vocab, blanked, top_k=1):
        filled[pos] = cands[0][0]
    right = sum(filled[i] == snippet[i] for i in hidden)
    return [f"fill-mask (a validation line, every _ filled with the most likely character; {right}/{len(hidden)} right):",
            f"  {blanked}", f"  {''.join(filled)}"]


# ----------------------------------------------------------------------------- eval, per kind


EVAL_FLAGS = {"gpt": (), "bert": ("seed",), "seq2seq": ("num_beams",), "classifier": (), "lora": ()}


def evaluate(ckpt, args, out):
    """`eval --checkpoint DIR DATA` for any kind: one line of metrics on DATA."""
    kind = ckpt.model.kind
    reject_flags(args, [d for k in EVAL_FLAGS.values() for d in k if d not in EVAL_FLAGS[kind]], f"a {kind} checkpoint")
    if ckpt.tokenizer is None:
        raise ValueError(f"{args.checkpoint}: the checkpoint has no tokenizer, so it cannot read text")
    where = f"checkpoint {args.checkpoint}, step {ckpt.step}"
    if args.file == "skills":  # exact match of a chat model on the held-out skills (cli_chat.py)
        from .cli_chat import chat_model, skills_report

        skills_report(chat_model(ckpt, args.checkpoint), ckpt.tokenizer, out)
        return
    from .lora import inference_model

    ckpt.model = inference_model(ckpt.model)  # a LoRA: merged into its base, a GPT (or a classifier)
    kind = ckpt.model.kind
    model, tok, meta = ckpt.model, ckpt.tokenizer, ckpt.meta.get("data") or {}
    if kind in ("gpt", "bert"):
        from .data import load_text

        from .metrics import perplexity

        text, name = load_text(args.file)
        ids = encode_text(tok, text, name)
        if kind == "gpt":
            from .train import eval_loss

            if len(ids) < 2:
                raise ValueError(f"{name}: expected at least 2 tokens to measure a loss, got {len(ids)}")
            loss, n = eval_loss(model, ids, batch_size=args.batch_size or 16)
            out(f"{name}: {n:,} tokens predicted, loss {loss:.4f} nats/token, perplexity {perplexity(loss):.2f} ({where})")
            return
        seed = args.seed or 0
        loss, n = masked_lm_loss(model, ids, seed, args.batch_size or 16, name)
        out(f"{name}: {n:,} of {len(ids):,} tokens masked (seed {seed}), masked-LM loss {loss:.4f} nats/token, "
            f"perplexity {perplexity(loss):.2f} ({where})")
        return
    if kind == "seq2seq":
        from .encoder_decoder import evaluate_seq2seq

        from .tasks import read_pairs_tsv

        m = pairs_meta(args.file, None)
        if m["kind"] == "numbers" or m["source"] == meta.get("source"):  # the run's own held-out pairs
            m = meta if meta.get("kind") == m["kind"] else m
            run = pairs_run(m, tok)
            name, pairs, which = run.name, run.task.pairs["val"], "the held-out validation pairs"
        else:
            name, which = m["source"], "all pairs"
            pairs = read_pairs_tsv(name)
        check_pairs(pairs, tok, model.config.max_len, name)
        beams = args.num_beams if args.num_beams and args.num_beams > 1 else None
        r = evaluate_seq2seq(model, pairs, tok, beam_size=beams, batch_size=args.batch_size or 256)
        decoder = f"beam search, {beams} beams" if beams else "greedy"
        out(f"{name}: {len(pairs):,} pairs ({which}), exact match {r['exact_match']:.1%}, BLEU {r['bleu']:.1f} "
            f"({decoder}; {where})")
        return
    from .metrics import accuracy, f1_score

    src = source_name(args.file, None)
    same = meta.get("kind") == "sentiment" and meta.get("source") == src
    m = dict(meta) if same else {"source": src, "test_fraction": 0.2, "val_fraction": 0.1, "split_seed": SPLIT_SEED}
    run = sentiment_run(m, tok, model.config.block_size)
    idx = run.test if same else np.arange(len(run.labels))
    pred = model.predict(run.ids[idx], run.lengths[idx], batch_size=args.batch_size or 256)
    which = "the held-out test split" if same else "all sentences"
    y = run.labels[idx]
    out(f"{run.name}: {len(idx):,} sentences ({which}), accuracy {accuracy(y, pred):.4f}, "
        f"F1 {f1_score(y, pred):.4f} ({where})")


def masked_lm_loss(model, ids, seed, batch_size, name):
    """BERT's masked-LM loss on a token stream: rows of [CLS] + block_size - 1 consecutive tokens
    (the last one padded), corrupted by `tasks.mask_tokens` with a fixed seed -> (mean loss over
    the masked positions, their number)."""
    from .tasks import CLS_ID, IGNORE_INDEX, PAD_ID, mask_tokens, pad_rows

    W = model.config.block_size - 1
    rows = [[CLS_ID] + ids[i : i + W].tolist() for i in range(0, len(ids), W)]
    x, y = mask_tokens(pad_rows(rows, PAD_ID)[0], np.random.default_rng(seed), vocab_size=model.config.vocab_size)
    total, count = 0.0, 0
    for b in range(0, len(x), batch_size):
        k = int((y[b : b + batch_size] != IGNORE_INDEX).sum())
        if k:
            total += model.forward(x[b : b + batch_size], y[b : b + batch_size])[1] * k
            count += k
    if not count:
        raise ValueError(f"{name}: too short to mask any token (expected a longer text)")
    return total / count, count
