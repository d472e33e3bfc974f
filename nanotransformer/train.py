"""The one training loop, for every model: AdamW on the flat buffer, warm-up + cosine learning
rate, gradient clipping, periodic evaluation, checkpoints, a progress bar and a loss-curve plot.

    trainer = Trainer(model, data, TrainConfig(max_steps=500), tokenizer=tok, out_dir="out")
    history = trainer.fit()               # evaluates, checkpoints, writes out/loss.png
    trainer = Trainer.from_checkpoint("out", data)     # ... and later carries on exactly

`model` is any `params.ParamStore` model (GPT, BERT, the encoder-decoder, the classifier) and
`data` a task of `tasks.py` that draws its batches (`LanguageModelTask`, `MaskedLMTask`,
`TranslationTask`, `ClassificationTask`); a `data.TokenData` stream means language modelling.
One step:
    batch = task.get_batch("train", B, trainer.rng)    # e.g. (x, y): (B, T) random windows
    logits, loss = model.forward(*batch, train=True, rng=trainer.rng)   # dropout from the same rng
    model.backward()                                   # model.grads, one flat array
    clip_grad_norm(model.grads, grad_clip)             # global norm over every parameter at once
    opt.step(lr(step))                                 # optim.AdamW: one fused pass over the buffer

Reproducibility: every random draw (batches and dropout masks) comes from `trainer.rng`, whose
state is saved in the checkpoint with the weights and the AdamW moments, so N steps straight
and N/2 + resume + N/2 give identical losses. Evaluation draws its batches from its own
generator, re-seeded each time (the same batches at every evaluation, and training does not
depend on how often you evaluate).

A loss that is NaN or inf stops training with `TrainingDiverged` naming the step; parameters
are not updated with it and the last checkpoint on disk (written only after a finite
evaluation) is left as it was.

Dimension legend: B batch, T time (block size), N number of parameters (flat buffer length).

`fit(stop_after=N)` stops cleanly (evaluated and checkpointed) after N steps of this run while
keeping the schedule of `max_steps`, so a long run can be done in pieces that resume exactly.

Does not: accumulate gradients over micro-batches, train on several processes, or
early-stop on the validation loss.
"""
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from .checkpoint import Checkpoint, has_checkpoint, load_checkpoint, read_sidecar, save_checkpoint
from .data import TokenData
from .optim import AdamW, clip_grad_norm, lr_schedule
from .tasks import LanguageModelTask


def _finite(x):
    """A finite real number (int or float, not bool)."""
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool) and math.isfinite(x)


def _int_at_least(low):
    return lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= low


# TrainConfig's fields that are checked on their own (min_lr is checked against lr): name ->
# (test, what is expected). The one set of rules, for the config and for the commands' flags.
FIELD_RULES = {
    **{name: (_int_at_least(1), "a positive integer") for name in ("batch_size", "max_steps", "eval_interval",
                                                                  "eval_iters")},  # fmt: skip
    "warmup": (_int_at_least(0), "a non-negative integer"),
    "seed": (_int_at_least(0), "a non-negative integer"),
    "lr": (lambda v: _finite(v) and v > 0, "a positive learning rate"),
    "beta1": (lambda v: _finite(v) and 0 <= v < 1, "a value in [0, 1)"),
    "beta2": (lambda v: _finite(v) and 0 <= v < 1, "a value in [0, 1)"),
    "eps": (lambda v: _finite(v) and v > 0, "a positive number"),
    "weight_decay": (lambda v: _finite(v) and v >= 0, "a number >= 0"),
    "grad_clip": (lambda v: v is None or (_finite(v) and v >= 0), "a number >= 0 (0 or None: no clipping)"),
}


def check_train_value(name, value):
    """One TrainConfig field on its own (FIELD_RULES); ValueError "name: expected ..., got ..."."""
    ok, expected = FIELD_RULES[name]
    if not ok(value):
        raise ValueError(f"{name}: expected {expected}, got {value!r}")


# a mean cross-entropy this large is no model at all, and exp() of it (the perplexity) overflows
LOSS_LIMIT = 700.0


class TrainingDiverged(RuntimeError):
    """The loss (or gradient norm) became NaN or inf."""


@dataclass
class TrainConfig:
    """Hyper-parameters of training (the network's are in the model's config, e.g. `model.GPTConfig`)."""

    batch_size: int = 16
    max_steps: int = 500
    lr: float = 1e-3
    min_lr: float = None  # end of the cosine; None -> lr / 10
    warmup: int = 50
    weight_decay: float = 0.1  # on 2-D weights only (model.decay_mask)
    beta1: float = 0.9
    beta2: float = 0.99
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global gradient norm; None or 0 disables
    eval_interval: int = 100  # evaluate (and checkpoint) every this many steps, and at the end
    eval_iters: int = 10  # batches per split per evaluation
    seed: int = 1337

    def __post_init__(self):
        for name in FIELD_RULES:
            check_train_value(name, getattr(self, name))
        if self.min_lr is None:
            self.min_lr = self.lr / 10
        if not _finite(self.min_lr) or not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"min_lr: expected a number in [0, lr={self.lr:g}] (the cosine decays from lr to it), "
                             f"got {self.min_lr!r}")

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


class Trainer:
    """Owns the optimiser, the RNG, the step counter and the loss history of one run."""

    def __init__(self, model, data, config=None, *, tokenizer=None, out_dir=None, progress=True, data_meta=None):
        self.model, self.data = model, data
        # the batches of one objective; a token stream means language modelling (GPT)
        self.task = data
        if isinstance(data, TokenData):
            if getattr(model, "base_kind", getattr(model, "kind", None)) != "gpt":  # a GPT, or a LoRA of one
                raise ValueError(f"data: a TokenData stream is next-token data for a GPT; a {type(model).__name__} "
                                 "needs its task from tasks.py (e.g. MaskedLMTask for BERT, TranslationTask, "
                                 "ClassificationTask)")
            self.task = LanguageModelTask(data, model.config.block_size)
        self.config = config or TrainConfig()
        self.tokenizer = tokenizer
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.progress = progress
        self.data_meta = data_meta or {}
        c = self.config
        self.opt = AdamW(model, c.lr, (c.beta1, c.beta2), c.eps, c.weight_decay)
        self.rng = np.random.default_rng(c.seed)
        self.step = 0
        self.history = {"step": [], "loss": [], "lr": [], "eval": []}  # eval: [{"step", "train", "val"}]
        self.last_saved_step = None
        self._timing = [0, 0, 0.0]  # steps, tokens, seconds of training in the current fit() (tokens/s)
        if self.out_dir is not None and has_checkpoint(self.out_dir):
            try:
                self.last_saved_step = read_sidecar(self.out_dir)["step"]
            except ValueError:
                pass

    # ------------------------------------------------------------------------- steps

    def _forward(self, *batch, **kw):
        """The model's forward for this task's objective (a task may name another method, e.g.
        BERT's "forward_cls"); the loss it returns is what `backward()` differentiates."""
        return getattr(self.model, getattr(self.task, "method", "forward"))(*batch, **kw)

    def lr_at(self, step):
        c = self.config
        return lr_schedule(step, c.lr, c.warmup, c.max_steps, c.min_lr)

    def train_step(self):
        """One optimiser step; returns the (pre-update) training loss of the batch."""
        c, model = self.config, self.model
        batch = self.task.get_batch("train", c.batch_size, self.rng)
        _, loss = self._forward(*batch, train=True, rng=self.rng, **getattr(self.task, "train_kwargs", {}))
        if not math.isfinite(loss) or loss > LOSS_LIMIT:
            self._diverged(f"loss is {loss}")
        model.backward()
        with np.errstate(invalid="ignore", over="ignore"):  # an inf norm is reported just below
            norm = clip_grad_norm(model.grads[model.frozen :], c.grad_clip or None)
        if not math.isfinite(norm):
            self._diverged(f"gradient norm is {norm} (loss {loss:.4f})")
        lr = self.lr_at(self.step)
        self.opt.step(lr=lr)
        self.step += 1
        self.history["step"].append(self.step)
        self.history["loss"].append(loss)
        self.history["lr"].append(lr)
        self._timing[1] += batch[0].size
        return loss

    def _diverged(self, what):
        if self.last_saved_step is not None:
            kept = f"the last good checkpoint (step {self.last_saved_step}) is kept in {self.out_dir}"
        elif self.out_dir is not None:
            kept = f"no checkpoint was written to {self.out_dir}"
        else:
            kept = "no checkpoint directory was given"
        raise TrainingDiverged(
            f"step {self.step + 1}: {what}; training stopped ({kept}). Try a lower --lr or more --warmup."
        )

    def evaluate(self):
        """Mean loss over eval_iters fixed batches of each split -> {"train": float, "val": float}."""
        c = self.config
        out = {}
        for k, split in enumerate(("train", "val")):
            rng = np.random.default_rng([c.seed, 1 + k])  # same batches at every evaluation
            losses = [self._forward(*self.task.get_batch(split, c.batch_size, rng))[1] for _ in range(c.eval_iters)]
            out[split] = float(np.mean(losses))
        return out

    # ------------------------------------------------------------------------- the loop

    def fit(self, max_steps=None, log=None, stop_after=None):
        """Train until step `max_steps` (default: config.max_steps), evaluating and checkpointing
        every eval_interval steps and at the end; then write loss.png. Returns the history.

        stop_after: stop (evaluated and checkpointed) after this many steps of this call, keeping
        the learning-rate schedule of config.max_steps; a later fit continues exactly.
        log: called with each evaluation line (default: printed above the progress bar; False: silent)."""
        from tqdm.auto import tqdm

        c = self.config
        end = c.max_steps if max_steps is None else max_steps
        if stop_after is not None:
            if not isinstance(stop_after, (int, np.integer)) or isinstance(stop_after, bool) or stop_after < 1:
                raise ValueError(f"stop_after: expected a positive integer, got {stop_after!r}")
            end = min(end, self.step + stop_after)
        bar = tqdm(total=end, initial=self.step, disable=not self.progress, unit="step", dynamic_ncols=True)
        self._timing = [0, 0, 0.0]  # evaluation and checkpointing are not timed
        try:
            while True:
                if self.step % c.eval_interval == 0 or self.step == end:
                    self._evaluate_and_save(log, bar)
                if self.step >= end:
                    break
                t0 = time.perf_counter()
                loss = self.train_step()
                self._timing[0] += 1
                self._timing[2] += time.perf_counter() - t0
                bar.update(1)
                if self.step % 10 == 0 or self.step == end:
                    bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{self.tokens_per_second():,.0f}",
                                    lr=f"{self.history['lr'][-1]:.2e}")
        finally:
            bar.close()
            if self.out_dir is not None and self.history["loss"]:
                self.out_dir.mkdir(parents=True, exist_ok=True)
                plot_loss_curve(self.history, self.out_dir / "loss.png", title=f"training on {self.task.source}")
        return self.history

    def tokens_per_second(self):
        """Training throughput of the current `fit` call (evaluation and checkpointing excluded)."""
        _, tokens, seconds = self._timing
        return tokens / max(seconds, 1e-9)

    def _evaluate_and_save(self, log, bar):
        if self.history["eval"] and self.history["eval"][-1]["step"] == self.step:
            return  # already evaluated at this step (e.g. just before a resume)
        ev = self.evaluate()
        if not all(math.isfinite(ev[k]) and ev[k] <= LOSS_LIMIT for k in ("train", "val")):
            self._diverged(f"evaluation loss is not finite or too large for a perplexity (train {ev['train']}, "
                           f"val {ev['val']})")
        self.history["eval"].append({"step": self.step, **ev})
        msg = f"step {self.step}: train loss {ev['train']:.4f}, val loss {ev['val']:.4f}"
        if getattr(self.task, "perplexity", False):
            msg += f", val perplexity {math.exp(ev['val']):.2f}"
        if self._timing[0]:
            msg += f" ({self.tokens_per_second():,.0f} tok/s)"
        if self.out_dir is not None and self.step > 0:
            self.save()
        if log is None:
            bar.write(msg)
        elif log:
            log(msg)

    # ------------------------------------------------------------------------- checkpoints

    def save(self, out_dir=None):
        """Checkpoint the full training state to out_dir (default: self.out_dir)."""
        out_dir = Path(out_dir or self.out_dir)
        meta = {"train_config": self.config.to_dict(), "history": self.history, "data": self.data_meta}
        save_checkpoint(out_dir, self.model, tokenizer=self.tokenizer, step=self.step, optimizer=self.opt,
                        rng=self.rng, meta=meta)
        if out_dir == self.out_dir:
            self.last_saved_step = self.step

    @classmethod
    def from_checkpoint(cls, checkpoint, data, *, out_dir=None, progress=True, overrides=None, backend=None):
        """Rebuild the trainer saved in `checkpoint` (a directory, or a loaded `checkpoint.Checkpoint`):
        model, optimiser moments, RNG state, step and history, to continue exactly where it stopped.
        data: the task (or, for a GPT, a TokenData encoded with the checkpoint's tokenizer).
        overrides: TrainConfig fields to change (e.g. {"max_steps": 2000})."""
        ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint, backend=backend)
        cfg_dict = dict(ckpt.meta.get("train_config", {}))
        cfg_dict.update(overrides or {})
        config = TrainConfig.from_dict(cfg_dict)
        tr = cls(ckpt.model, data, config, tokenizer=ckpt.tokenizer, out_dir=out_dir or ckpt.path,
                 progress=progress, data_meta=ckpt.meta.get("data"))
        if ckpt.optimizer is not None:
            tr.opt.load(ckpt.optimizer)
        if ckpt.rng_state is not None:
            tr.rng.bit_generator.state = ckpt.rng_state
        tr.step = ckpt.step
        hist = ckpt.meta.get("history")
        if hist:
            tr.history = {k: list(hist.get(k, [])) for k in ("step", "loss", "lr", "eval")}
        tr.last_saved_step = ckpt.step
        return tr


def fit_task(model, task, steps, batch_size=32, lr=1e-3, warmup=50, weight_decay=0.01, grad_clip=1.0, seed=0,
             log_every=0, beta2=0.999):  # fmt: skip
    """Train `model` on `task` for `steps` steps with the one `Trainer` (no checkpoints, no
    progress bar) and return the per-step training losses: the library functions `train_mlm`,
    `train_classifier`, `train_seq2seq` are this. log_every > 0 evaluates (and prints) every that
    many steps. The learning rate warms up, then decays by cosine to lr / 10."""
    config = TrainConfig(batch_size=batch_size, max_steps=steps, lr=lr, warmup=warmup, weight_decay=weight_decay,
                         grad_clip=grad_clip, beta2=beta2, eval_interval=log_every or steps, eval_iters=1,
                         seed=seed)  # fmt: skip
    trainer = Trainer(model, task, config, progress=False)
    trainer.fit(log=print if log_every else False)
    return list(trainer.history["loss"])


# ----------------------------------------------------------------------------- evaluation on a text


def eval_loss(model, ids, batch_size=16):
    """Mean cross-entropy of `model` over a token stream ids: (N,) -> (loss, number of predictions).

    The stream is cut into consecutive windows of block_size + 1 tokens overlapping by one, so
    each of the N - 1 next-token predictions is made exactly once (a token early in a window
    sees little context, so this is slightly pessimistic compared with a sliding window). The
    tail is a last window ending at the stream's end whose already-counted targets are ignored
    (-100).
    """
    ids = np.asarray(ids, dtype=np.int64)
    T = model.config.block_size
    N = len(ids)
    if N < 2:
        raise ValueError(f"ids: expected at least 2 tokens, got {N}")
    T = min(T, N - 1)
    starts = list(range(0, N - 1 - T + 1, T))  # windows ids[s : s + T + 1]
    covered = starts[-1] + T  # predictions 0 .. covered-1 are counted (target index s+1 .. s+T)
    total, count = 0.0, 0
    xs, ys = [], []
    for s in starts:
        xs.append(ids[s : s + T])
        ys.append(ids[s + 1 : s + T + 1])
    if covered < N - 1:  # the tail: the last window, counting only its new targets
        s = N - 1 - T
        y = ids[s + 1 : s + T + 1].copy()
        y[: covered - s] = -100
        xs.append(ids[s : s + T])
        ys.append(y)
    for b in range(0, len(xs), batch_size):
        x, y = np.stack(xs[b : b + batch_size]), np.stack(ys[b : b + batch_size])
        _, loss = model.forward(x, y)
        n = int((y != -100).sum())
        total += loss * n
        count += n
    return total / count, count


# ----------------------------------------------------------------------------- plotting


def plot_loss_curve(history, path, title="training"):
    """Write a PNG of the training loss (raw and smoothed) and the evaluated losses.

    Uses matplotlib's Agg canvas directly, so it never changes the interactive backend of a
    notebook or script that imported this module.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    steps, loss = np.asarray(history["step"]), np.asarray(history["loss"], dtype=float)
    if len(loss):
        ax.plot(steps, loss, color="tab:blue", alpha=0.25, lw=0.8, label="train (batch)")
        k = max(1, min(50, len(loss) // 10))
        if k > 1:  # moving average, so the trend is visible through batch noise
            smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
            ax.plot(steps[k - 1 :], smooth, color="tab:blue", lw=1.5, label=f"train ({k}-step mean)")
    ev = history.get("eval", [])
    if ev:
        es = [e["step"] for e in ev]
        ax.plot(es, [e["train"] for e in ev], "o-", color="tab:green", ms=3, label="train (eval)")
        ax.plot(es, [e["val"] for e in ev], "o-", color="tab:red", ms=3, label="val (eval)")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)
