"""GPT-2's block vs Llama's, at equal parameter count and equal wall-clock, on tinyshakespeare
(char level) on this CPU: validation loss against training seconds, tokens/s, KV-cache bytes.

    python benchmarks/gpt2_vs_llama.py                 # 3 minutes of training each, ~7 min in all
    python benchmarks/gpt2_vs_llama.py --minutes 1     # a quicker look

The two models (L4 NH4 C128 T64, vocabulary 65):
    gpt2   layer norm, learned positions, GELU MLP (4C), biases, tied head        809,856 parameters
    llama  RMSNorm, RoPE, SwiGLU (d_ff 384), 2 key/value heads (GQA), no biases,
           untied head                                                          804,224 parameters
(d_ff 384 instead of the preset's 344 gives back the parameters GQA and the missing biases and
position table save, to within 0.7 %.)

Equal wall-clock on a shared machine: the two runs are interleaved in slices of --slice seconds
(gpt2, llama, gpt2, ...), each with its own optimiser, RNG and clock, so a change of machine load
hits both alike. Each model trains for --minutes of its *own* training time (evaluation not
counted), and its learning rate follows warm-up + cosine over that time (as in
quality_shakespeare.py), so both schedules end annealed at the deadline whatever their speed.
The same seed gives both the same batches in the same order. The final figure is the mean loss
over the whole validation split (the last 10 %, ~111k characters).

Writes benchmarks/results/gpt2_vs_llama.json and .png (val loss vs seconds, both on one plot).
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

from timed import lr_by_time  # benchmarks/timed.py: these scripts run from benchmarks/

HERE = Path(__file__).resolve().parent
COMMON = dict(block_size=64, n_layer=4, n_head=4, d_model=128, dropout=0.0)
ARCH_KW = {"gpt2": {}, "llama": dict(d_ff=384)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=3.0, help="training time of each model")
    p.add_argument("--slice", type=float, default=5.0, help="seconds per turn of the interleaving")
    p.add_argument("--eval-every", type=float, default=10.0, help="seconds of a model's training between evaluations")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup-seconds", type=float, default=10.0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--out", default=str(HERE / "results" / "gpt2_vs_llama"))
    return p.parse_args(argv)


class Run:
    """One model's training with its own clock: lr by its own elapsed training time."""

    def __init__(self, arch, data, vocab_size, args):
        from nanotransformer.model import GPT, GPTConfig
        from nanotransformer.train import Trainer, TrainConfig

        self.arch, self.args = arch, args
        self.cfg = GPTConfig.preset(arch, vocab_size=vocab_size, **COMMON, **ARCH_KW[arch])
        self.model = GPT(self.cfg, seed=args.seed)
        tcfg = TrainConfig(batch_size=args.batch_size, max_steps=10**9, lr=args.lr, warmup=0, weight_decay=0.1,
                           beta2=0.99, grad_clip=1.0, eval_interval=10**9, eval_iters=10, seed=args.seed)
        self.trainer = Trainer(self.model, data, tcfg, progress=False)
        self.trainer.lr_at = self.lr
        self.seconds = 0.0  # training time so far (evaluations excluded)
        self.next_eval = 0.0
        self.curve = {"seconds": [], "step": [], "val_loss": [], "train_loss": []}

    def lr(self, step):
        a = self.args
        return lr_by_time(self.seconds, a.minutes * 60, a.lr, a.warmup_seconds, a.lr / 10)

    def done(self):
        return self.seconds >= self.args.minutes * 60

    def evaluate(self):
        ev = self.trainer.evaluate()
        for k, v in (("seconds", round(self.seconds, 2)), ("step", self.trainer.step), ("val_loss", ev["val"]),
                     ("train_loss", ev["train"])):
            self.curve[k].append(v)
        self.next_eval += self.args.eval_every

    def train_for(self, seconds):
        end = min(self.seconds + seconds, self.args.minutes * 60)
        while self.seconds < end:
            if self.seconds >= self.next_eval:
                self.evaluate()
            t0 = time.perf_counter()
            self.trainer.train_step()
            self.seconds += time.perf_counter() - t0


def kv_bytes_per_token(cfg, itemsize=4):
    """KV-cache bytes per decoded token: k and v, every layer, NKV heads of hs floats."""
    return 2 * cfg.n_layer * cfg.n_kv_head * (cfg.d_model // cfg.n_head) * itemsize


def main(argv=None):
    args = parse_args(argv)
    import numpy as np

    from nanotransformer.data import TokenData, build_tokenizer, load_text
    from nanotransformer.model import KVCache
    from nanotransformer.train import eval_loss

    load_start = os.getloadavg()
    text, name = load_text("tinyshakespeare")
    tok = build_tokenizer(text, "char")
    data = TokenData(np.asarray(tok.encode(text)), val_fraction=0.1, source=name)
    runs = [Run(arch, data, tok.vocab_size, args) for arch in ("gpt2", "llama")]
    for r in runs:
        print(f"{r.arch}: {r.model.num_params():,} parameters, {r.cfg}", flush=True)
    while not all(r.done() for r in runs):
        for r in runs:
            if not r.done():
                r.train_for(args.slice)
        print("  " + "  ".join(f"{r.arch} {r.seconds:5.0f}s step {r.trainer.step:5d} val "
                               f"{r.curve['val_loss'][-1]:.4f}" for r in runs), flush=True)
    load_end = os.getloadavg()
    results = {"runs": {}, "machine": {"cpu_count": os.cpu_count(), "load_average_start": load_start,
                                      "load_average_end": load_end}, "args": vars(args)}
    for r in runs:
        r.evaluate()  # the curve's last point: at the deadline
        val, n_val = eval_loss(r.model, data.split["val"], batch_size=32)
        cache = KVCache(r.cfg.n_layer)
        r.model.forward(np.asarray([tok.encode("ROMEO:")]), kv_cache=cache)
        assert cache.nbytes() == kv_bytes_per_token(r.cfg) * len(cache)  # the formula is what the cache holds
        steps = r.trainer.step
        results["runs"][r.arch] = {
            **r.curve, "params": r.model.num_params(), "config": r.cfg.to_dict(), "steps": steps,
            "train_seconds": round(r.seconds, 1), "tok_per_s": round(steps * args.batch_size * COMMON["block_size"] / r.seconds),
            "val_loss_full_split": round(val, 4), "val_tokens": n_val, "kv_bytes_per_token": kv_bytes_per_token(r.cfg),
        }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    plot(results, out.with_suffix(".png"))
    print(f"load average at start {load_start}, at end {load_end}")
    for arch, r in results["runs"].items():
        print(f"{arch:6s} {r['params']:,} params, {r['steps']} steps in {r['train_seconds']} s, {r['tok_per_s']:,} tok/s, "
              f"val loss {r['val_loss_full_split']} (whole split), KV cache {r['kv_bytes_per_token']} bytes/token")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")
    return 0


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for arch, r in results["runs"].items():
        ax.plot(r["seconds"], r["val_loss"], label=f"{arch} ({r['params']:,} params, {r['tok_per_s']:,} tok/s)")
    ax.set_xlabel("training seconds (this 2-core CPU)")
    ax.set_ylabel("val loss (nats/char)")
    ax.set_ylim(top=min(3.5, ax.get_ylim()[1]))
    ax.set_title("GPT-2 block vs Llama block, tinyshakespeare char level")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    sys.exit(main())
