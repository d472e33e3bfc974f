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

Dimension legend: B batch, T time (block size), P parameters (flat buffer length), N ranks, K grad_accum.

`fit(stop_after=N)` stops cleanly (evaluated and checkpointed) after N steps of this run while
keeping the schedule of `max_steps`, so a long run can be done in pieces that resume exactly.

Gradient accumulation and data parallelism (chapter 20): with grad_accum = K and an `mpirun -n N`
job (`distributed.world()`), batch_size stays the global batch B; it is drawn by every rank with
the same RNG and cut into N K micro-batches of B / (N K) rows, rank r runs K of them, and their
gradients are combined, weighted by each one's number of loss terms, and summed over the ranks
(one Allreduce) before the one clip + AdamW step (see `_accumulate`). With shard_optimizer each
rank keeps the AdamW moments of 1/N of the buffer (ZeRO-1). Rank 0 alone prints and writes.

Does not: overlap the gradient all-reduce with the backward pass, or early-stop on the
validation loss.
"""
import contextlib
import math
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from .checkpoint import Checkpoint, has_checkpoint, load_checkpoint, locked, read_sidecar, save_checkpoint
from .data import TokenData
from . import distributed
from .distributed import digest, launched_size, shard_bounds
from .distributed import world as mpi_world
from .metrics import perplexity
from .optim import AdamW, clip_grad_norm, lr_schedule
from .tasks import IGNORE_INDEX, LanguageModelTask
from .resources import check_memory
from .validation import check_ids


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
    "grad_accum": (_int_at_least(1), "a positive integer"),
    "shard_optimizer": (lambda v: isinstance(v, (bool, np.bool_)), "True or False"),
}


def check_train_value(name, value):
    """One TrainConfig field on its own (FIELD_RULES); ValueError "name: expected ..., got ..."."""
    ok, expected = FIELD_RULES[name]
    if not ok(value):
        raise ValueError(f"{name}: expected {expected}, got {value!r}")


def check_split(batch_size, grad_accum, ranks=1):
    """The global batch is cut into ranks x grad_accum equal micro-batches: it must divide."""
    if batch_size % (ranks * grad_accum):
        why = f"{ranks} ranks x grad_accum {grad_accum}" if ranks > 1 else f"grad_accum={grad_accum}"
        way_out = (f"; --grad-accum K sets the micro-batches per rank (a resumed run keeps its checkpoint's): "
                   f"{ranks} x K must divide the batch") if ranks > 1 else ""
        raise ValueError(f"batch_size: expected a multiple of {ranks * grad_accum} ({why}: the global batch is cut "
                         f"into that many equal micro-batches), got {batch_size}{way_out}")


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
    grad_accum: int = 1  # micro-batches per rank per step (the batch is cut into ranks x grad_accum of them)
    shard_optimizer: bool = False  # ZeRO-1: each rank keeps the AdamW moments of its slice only

    def __post_init__(self):
        for name in FIELD_RULES:
            check_train_value(name, getattr(self, name))
        check_split(self.batch_size, self.grad_accum, launched_size())  # the ranks of an `mpirun` job, if any
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

    def __init__(self, model, data, config=None, *, tokenizer=None, out_dir=None, progress=True, data_meta=None,
                 world=None):
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
        # the ranks of an `mpirun` job (distributed.py); rank 0 alone prints and writes, so the
        # others keep no out_dir (they still take part in a save: a sharded optimiser is gathered)
        self.world = world or mpi_world()
        self.saving = out_dir is not None
        self.out_dir = None if out_dir is None or not self.world.is_root else Path(out_dir)
        self.progress = progress and self.world.is_root
        self.data_meta = data_meta or {}
        c = self.config
        check_split(c.batch_size, c.grad_accum, self.world.size)
        if getattr(model, "config", None) is not None and hasattr(model.config, "d_model"):
            check_memory(model, c.batch_size // (self.world.size * c.grad_accum), c.batch_size)
        trainable = len(model.params) - model.frozen
        self.shard_bounds = shard_bounds(trainable, self.world.size) if c.shard_optimizer else None
        shard = None if self.shard_bounds is None else self.shard_bounds[self.world.rank : self.world.rank + 2]
        self.opt = AdamW(model, c.lr, (c.beta1, c.beta2), c.eps, c.weight_decay, shard=shard)
        self._grad_sum = None  # the accumulated gradient of several micro-batches (trainable part)
        self._agreed = self.world.size == 1
        self._end = None  # the last step of the current fit()
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
        self._agree()
        batch = self.task.get_batch("train", c.batch_size, self.rng)
        if self.world.size * c.grad_accum == 1:
            _, loss = self._forward(*batch, train=True, rng=self.rng, **getattr(self.task, "train_kwargs", {}))
            if not math.isfinite(loss) or loss > LOSS_LIMIT:
                self._diverged(f"loss is {loss}")
            model.backward()
        else:
            loss = self._accumulate(batch)
            if not math.isfinite(loss) or loss > LOSS_LIMIT:
                self._diverged(f"loss is {loss}")
        with np.errstate(invalid="ignore", over="ignore"):  # an inf norm is reported just below
            norm = clip_grad_norm(model.grads[model.frozen :], c.grad_clip or None)
        if not math.isfinite(norm):
            self._diverged(f"gradient norm is {norm} (loss {loss:.4f})")
        lr = self.lr_at(self.step)
        self.opt.step(lr=lr)  # sharded (ZeRO-1): this rank's slice only; then every rank gets every slice
        if self.shard_bounds is not None:
            self.world.allgather_slices(model.params[model.frozen :], self.shard_bounds)
        self.step += 1
        self.history["step"].append(self.step)
        self.history["loss"].append(loss)
        self.history["lr"].append(lr)
        self._timing[1] += batch[0].size
        return loss

    def _accumulate(self, batch):
        """Forward and backward of this rank's micro-batches of the global batch, their gradients
        summed, then summed over the ranks -> the loss of the whole batch; model.grads holds its
        gradient.

        The batch's loss is a mean over its n loss terms (tokens that are not ignored, sentences,
        pairs), and micro-batch j's loss L_j a mean over its own n_j, so
            L = sum_j (n_j / n) L_j    and    dL/dp = sum_j (n_j / n) dL_j/dp
        exactly (a masked-LM micro-batch has more or fewer masked tokens than its share). The
        micro-batches are cut in order and rank r holds numbers r K .. r K + K - 1 (K =
        grad_accum); each rank adds its own in order and the ranks are added in rank order, so
        two ranks give bit for bit what one process gives with grad_accum 2. Dropout of
        micro-batch j draws from default_rng([seed, 3, step, j]): it depends on j, not on which
        rank runs it, and the trainer's RNG draws the batches alone, as with one micro-batch (so
        without dropout, K micro-batches and one K times larger batch see the same data)."""
        c, model, w = self.config, self.model, self.world
        micro = micro_batches(self.task, batch, w.size * c.grad_accum)
        n = sum(terms for _, terms in micro)
        g = model.grads[model.frozen :]
        if self._grad_sum is None:
            self._grad_sum = np.empty_like(g)
        loss = 0.0
        for j in range(w.rank * c.grad_accum, (w.rank + 1) * c.grad_accum):
            part, terms = micro[j]
            weight = terms / n if n else 0.0
            _, loss_j = self._forward(*part, train=True, rng=np.random.default_rng([c.seed, 3, self.step, j]),
                                      **getattr(self.task, "train_kwargs", {}))
            model.backward()
            if j == w.rank * c.grad_accum:
                np.multiply(g, g.dtype.type(weight), out=self._grad_sum)
            else:
                self._grad_sum += g * g.dtype.type(weight)
            loss += weight * float(loss_j)
        g[...] = w.allreduce_sum(self._grad_sum)  # the one Allreduce of the flat gradient buffer
        return w.sum_in_rank_order(loss)

    def _agree(self):
        """Before the first step or evaluation of a job of several ranks: do they all hold the same
        config, parameters, optimiser step, RNG state and data? (distributed.check_agreement)"""
        if self._agreed:
            return
        c = self.config
        probe = np.random.default_rng([c.seed, 99])
        data = [self.task.get_batch(split, min(c.batch_size, 4), probe) for split in ("train", "val")]
        distributed.check_agreement(self.world, {
            "the training config": digest(sorted(c.to_dict().items())),
            "the run's last step (--max-steps, --stop-after)": digest(self._end),
            "the parameters": digest(self.model.params[self.model.frozen :]),
            "the step, optimiser step and RNG state": digest(self.step, self.opt.t, self.rng.bit_generator.state),
            "the data": digest(self.data_meta, *[a for b in data for a in b]),  # data_meta: the files' sha256
        })
        self._agreed = True
        self.world.talked = True  # training starts: from here a rank's own error ends the job (MPI_Abort)

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
        c, w = self.config, self.world
        self._agree()
        out = {}
        for k, split in enumerate(("train", "val")):
            rng = np.random.default_rng([c.seed, 1 + k])  # same batches at every evaluation
            mine = {}  # several ranks: each evaluates every size-th batch (all draw all, to stay in step)
            for i in range(c.eval_iters):
                batch = self.task.get_batch(split, c.batch_size, rng)
                if i % w.size == w.rank:
                    mine[i] = self._forward(*batch)[1]
            losses = {i: v for part in w.allgather(mine) for i, v in part.items()}
            out[split] = float(np.mean([losses[i] for i in range(c.eval_iters)]))
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
        self._end = end  # the ranks of a job must agree on it (_agree)
        with contextlib.ExitStack() as stack:
            if self.out_dir is not None:  # one writer per directory, for the whole run
                stack.enter_context(locked(self.out_dir))
            try:
                self._fit_locked(end, log, tqdm)
            except KeyboardInterrupt:  # the curve up to the checkpoint that was kept, then stop
                self._plot(self.last_saved_step)
                raise
            # the curve of a run that ended normally (written atomically, like the checkpoint): a
            # failed or diverged run leaves the previous loss.png, like the previous checkpoint, as it was
            self._plot(self.step)
        return self.history

    def _plot(self, upto):
        """out_dir/loss.png of the history up to step `upto` (the last checkpoint's, so the curve
        and the checkpoint beside it always agree)."""
        if self.out_dir is None or not upto or not self.history["loss"]:
            return
        n = sum(1 for s in self.history["step"] if s <= upto)
        hist = {"step": self.history["step"][:n], "loss": self.history["loss"][:n],
                "eval": [e for e in self.history["eval"] if e["step"] <= upto]}
        plot_loss_curve(hist, self.out_dir / "loss.png", title=f"training on {self.task.source}")

    def _fit_locked(self, end, log, tqdm):
        c = self.config
        bar = tqdm(total=end, initial=self.step, disable=not self.progress, unit="step", dynamic_ncols=True)
        self._timing = [0, 0, 0.0]  # evaluation and checkpointing are not timed
        try:
            while True:
                if self.step % c.eval_interval == 0 or self.step == end:
                    self._evaluate_and_save(log, bar)
                if self.step >= end:
                    break
                t0 = time.perf_counter()
                with np.errstate(over="ignore", invalid="ignore"):  # a diverging step is reported by train_step
                    loss = self.train_step()
                self._timing[0] += 1
                self._timing[2] += time.perf_counter() - t0
                bar.update(1)
                if self.step % 10 == 0 or self.step == end:
                    bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{self.tokens_per_second():,.0f}",
                                    lr=f"{self.history['lr'][-1]:.2e}")
        finally:
            bar.close()

    def parallel_summary(self):
        """Lines saying how a step is split (ranks, micro-batches, sharded moments); none for one
        process with one micro-batch."""
        c, w = self.config, self.world
        if w.size == 1 and c.grad_accum == 1:
            return []
        rows = c.batch_size // (w.size * c.grad_accum)
        lines = [f"data parallel: {w.size} rank{'s' if w.size > 1 else ''} x {c.grad_accum} micro-batch"
                 f"{'es' if c.grad_accum > 1 else ''} of {rows} = the global batch of {c.batch_size}, one "
                 f"{'all-reduced ' if w.size > 1 else ''}gradient per step"]
        if self.shard_bounds is not None and w.size > 1:
            full = 2 * (len(self.model.params) - self.model.frozen) * self.model.params.itemsize
            lines.append(f"ZeRO-1: AdamW moments {self.opt.state_bytes() / 2**20:.3f} MiB on this rank "
                         f"(unsharded: {full / 2**20:.3f} MiB)")
        return lines

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
            msg += f", val perplexity {perplexity(ev['val']):.2f}"
        if self._timing[0]:
            msg += f" ({self.tokens_per_second():,.0f} tok/s)"
        if self.saving and self.step > 0:
            self.save()
        if self.world.is_root and log is None:  # the other ranks of a job print nothing
            bar.write(msg)
        elif self.world.is_root and log:
            log(msg)

    # ------------------------------------------------------------------------- checkpoints

    def save(self, out_dir=None):
        """Checkpoint the full training state to out_dir (default: self.out_dir). Several ranks:
        every rank calls it (a sharded optimiser's moments are gathered), rank 0 alone writes."""
        opt = self.opt
        if self.shard_bounds is not None:  # ZeRO-1: the whole moments, laid out like the buffer, on rank 0
            m, v = (self.world.gather_to_root(a[0]) for a in (opt.m, opt.v))
            opt = None if m is None else opt.unsharded(m, v)
        if not self.world.is_root:
            self.last_saved_step = self.step
            return
        out_dir = Path(out_dir or self.out_dir)
        meta = {"train_config": self.config.to_dict(), "history": self.history, "data": self.data_meta}
        save_checkpoint(out_dir, self.model, tokenizer=self.tokenizer, step=self.step, optimizer=opt,
                        rng=self.rng, meta=meta)
        if out_dir == self.out_dir:
            self.last_saved_step = self.step

    @classmethod
    def from_checkpoint(cls, checkpoint, data, *, out_dir=None, progress=True, overrides=None, backend=None,
                        world=None):
        """Rebuild the trainer saved in `checkpoint` (a directory, or a loaded `checkpoint.Checkpoint`):
        model, optimiser moments, RNG state, step and history, to continue exactly where it stopped.
        data: the task (or, for a GPT, a TokenData encoded with the checkpoint's tokenizer).
        overrides: TrainConfig fields to change (e.g. {"max_steps": 2000})."""
        ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint, backend=backend)
        cfg_dict = dict(ckpt.meta.get("train_config", {}))
        seed = (overrides or {}).get("seed", cfg_dict.get("seed"))
        if "seed" in cfg_dict and seed != cfg_dict["seed"]:  # its batches so far, and every evaluation's, came from it
            raise ValueError(f"seed: cannot change when resuming (the run in {ckpt.path} has seed {cfg_dict['seed']}, "
                             f"got {seed})")
        cfg_dict.update(overrides or {})
        config = TrainConfig.from_dict(cfg_dict)
        tr = cls(ckpt.model, data, config, tokenizer=ckpt.tokenizer, out_dir=out_dir or ckpt.path,
                 progress=progress, data_meta=ckpt.meta.get("data"), world=world)
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


def micro_batches(task, batch, n):
    """The global batch cut into n micro-batches of consecutive rows -> [(arrays, loss terms)],
    loss terms being what the micro-batch's mean loss divides by: its targets that are not
    IGNORE_INDEX (the last array of every task's batch is its targets or labels). A task whose
    rows are not independent (DPO's chosen + rejected pairs) cuts its own: task.micro_batches."""
    if hasattr(task, "micro_batches"):
        return task.micro_batches(batch, n)
    rows = len(batch[0]) // n
    parts = [tuple(a[j * rows : (j + 1) * rows] for a in batch) for j in range(n)]
    return [(p, int(np.count_nonzero(p[-1] != IGNORE_INDEX))) for p in parts]


# ----------------------------------------------------------------------------- evaluation on a text


def eval_loss(model, ids, batch_size=16):
    """Mean cross-entropy of `model` over a token stream ids: (N,) -> (loss, number of predictions).

    The stream is cut into consecutive windows of block_size + 1 tokens overlapping by one, so
    each of the N - 1 next-token predictions is made exactly once (a token early in a window
    sees little context, so this is slightly pessimistic compared with a sliding window). The
    tail is a last window ending at the stream's end whose already-counted targets are ignored
    (-100).
    """
    ids = np.asarray(ids)
    if ids.ndim != 1 or ids.dtype.kind not in "iu":  # 3.7 is not a token (and must not become 3)
        raise ValueError(f"ids: expected a 1-D sequence of integer token ids, got shape {ids.shape} dtype {ids.dtype}")
    check_ids("ids", ids, model.config.vocab_size)
    ids = ids.astype(np.int64)
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
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:  # to a temporary name, then renamed over the old plot: never a half-written file
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png")
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise OSError(f"{path}: could not write the loss curve ({e.strerror or e})") from None
    return path
