"""nanoGPT's own CPU recipe (its README, "I only have a macbook"), end to end, ours against PyTorch.

    python benchmarks/nanogpt_recipe.py                 # both, one run each, ~4 min on 2 cores
    python benchmarks/nanogpt_recipe.py --rounds 3      # alternating, for the spread
    python benchmarks/nanogpt_recipe.py --chunk 0       # each run whole, one after the other
    python benchmarks/nanogpt_recipe.py --no-torch --iters 200

The recipe: character-level tinyshakespeare (90 / 10 split), L=4 NH=4 C=128 T=64, batch 12, 2000
iterations, lr 1e-3 with 100 warm-up iterations and a cosine down to 1e-4 at iteration 2000,
AdamW (beta2 0.99, weight decay 0.1 on every 2-D weight), gradient clipping at 1.0, dropout 0,
and an evaluation every 250 iterations of 20 batches of each split. Wall time counts everything
from the first step to the last evaluation (not building the data or the model).

The two runs take turns, --chunk iterations at a time (default 250, the evaluation interval;
who goes first alternates), and each side's wall time is the sum of its chunks. This machine's
speed moves by 30-40 % within minutes: run one after the other, the same code took 108 s in one
run and 154 s in the next, and a ratio of two such times measured the machine as much as the
code. Taking turns, both runs see the same minutes. Each run is exactly the run it would be whole
(ours: `Trainer.fit(stop_after=...)` continues exactly; PyTorch's loop is only paused), and a
0.2 s pause at each switch, not timed, lets the other library's idle threads stop spinning.

Ours: the one `train.Trainer` (backend auto). PyTorch: the benchmark's own PyTorch GPT of the same
architecture (`bench_train.torch_gpt`: torch.nn layers, F.scaled_dot_product_attention, tied head,
torch.optim.AdamW), initialised as nanoGPT and ours are, in a loop that follows nanoGPT's train.py (its get_lr, clip_grad_norm_,
estimate_loss). Both draw random windows with numpy from the same token stream. The target of
issue 17: ours <= 0.8 x PyTorch's wall time at equal final val loss (+-0.02).

Writes benchmarks/results/nanogpt_recipe.json. Needs ../shared/data/tinyshakespeare.txt (or the
download) and, for the PyTorch column, torch.
"""
import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np

from bench_train import have_torch, torch_gpt  # the script's own directory, benchmarks/, is on sys.path

RECIPE = dict(n_layer=4, n_head=4, d_model=128, block_size=64, batch_size=12, iters=2000, lr=1e-3, min_lr=1e-4,
              warmup=100, weight_decay=0.1, beta2=0.99, grad_clip=1.0, eval_interval=250, eval_iters=20)


def stream():
    from nanotransformer.data import TokenData, load_text
    from nanotransformer.tokenizer import CharTokenizer

    text, _ = load_text("tinyshakespeare")
    tok = CharTokenizer.from_text(text)
    return TokenData(np.asarray(tok.encode(text), dtype=np.int64), 0.1, "tinyshakespeare"), tok.vocab_size


def ours(r, data, V, seed):
    from nanotransformer.model import GPT, GPTConfig
    from nanotransformer.train import TrainConfig, Trainer

    model = GPT(GPTConfig(vocab_size=V, block_size=r["block_size"], n_layer=r["n_layer"], n_head=r["n_head"],
                          d_model=r["d_model"], dropout=0.0), seed=seed)  # fmt: skip
    cfg = TrainConfig(batch_size=r["batch_size"], max_steps=r["iters"], lr=r["lr"], min_lr=r["min_lr"],
                      warmup=r["warmup"], weight_decay=r["weight_decay"], beta2=r["beta2"], grad_clip=r["grad_clip"],
                      eval_interval=r["eval_interval"], eval_iters=r["eval_iters"], seed=seed)  # fmt: skip
    trainer = Trainer(model, data, cfg, progress=False)

    def run(chunk):
        while True:
            history = trainer.fit(log=False, stop_after=chunk)
            if trainer.step >= r["iters"]:
                return history["eval"][-1]["val"]
            yield

    return run


def nanogpt_lr(it, r):
    """nanoGPT train.py's get_lr (lr_decay_iters = max_iters)."""
    if it < r["warmup"]:
        return r["lr"] * (it + 1) / (r["warmup"] + 1)
    ratio = (it - r["warmup"]) / (r["iters"] - r["warmup"])
    return r["min_lr"] + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (r["lr"] - r["min_lr"])


def pytorch(r, data, V, seed):
    import torch

    cfg = dict(n_layer=r["n_layer"], n_head=r["n_head"], d_model=r["d_model"], block_size=r["block_size"], vocab_size=V)
    model, opt = torch_gpt(cfg, r["lr"], r["weight_decay"], seed=seed, decay_wpe=True)
    with torch.no_grad():  # nanoGPT's _init_weights (and ours): N(0, 0.02), c_proj 0.02 / sqrt(2 L), biases 0
        for name, w in model.named_parameters():
            if w.dim() == 2:
                std = 0.02 / math.sqrt(2 * r["n_layer"]) if name.endswith(("attn_proj.weight", "mlp_proj.weight")) else 0.02
                w.normal_(0.0, std)
            elif name.endswith(".bias"):
                w.zero_()
    for g in opt.param_groups:
        g["betas"] = (0.9, r["beta2"])
    rng = np.random.default_rng(seed)
    T, B = r["block_size"], r["batch_size"]
    splits = data.split

    def batch(split, gen):
        d = splits[split]
        ix = gen.integers(0, len(d) - T - 1, size=B)
        x = np.stack([d[i : i + T] for i in ix])
        y = np.stack([d[i + 1 : i + T + 1] for i in ix])
        return torch.from_numpy(x), torch.from_numpy(y)

    @torch.no_grad()
    def estimate_loss():
        model.eval()
        out = {}
        for k, split in enumerate(splits):
            gen = np.random.default_rng([seed, 1 + k])
            out[split] = float(np.mean([model(*batch(split, gen)).item() for _ in range(r["eval_iters"])]))
        model.train()
        return out

    def run(chunk):
        for it in range(r["iters"] + 1):
            if it % r["eval_interval"] == 0 or it == r["iters"]:
                val = estimate_loss()["val"]
            if it == r["iters"]:
                return val
            if it and it % chunk == 0:
                yield
            for g in opt.param_groups:
                g["lr"] = nanogpt_lr(it, r)
            loss = model(*batch("train", rng))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), r["grad_clip"])
            opt.step()

    return run


def take_turns(runs, chunk, first=0):
    """runs: {name: generator of one run} -> {name: (seconds, final val loss)}, the generators
    advanced one chunk each in turn (`first` = which goes first in the first turn), each one's
    chunks timed and summed."""
    seconds, vals, live = dict.fromkeys(runs, 0.0), {}, dict(runs)
    turn = first
    while live:
        names = list(live) if turn % 2 == 0 else list(live)[::-1]
        for name in names:
            time.sleep(0.2)  # not timed: the other library's threads stop spinning
            t0 = time.perf_counter()
            try:
                next(live[name])
            except StopIteration as done:
                vals[name] = done.value
                del live[name]
            seconds[name] += time.perf_counter() - t0
        turn += 1
    return {name: (seconds[name], vals[name]) for name in runs}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=1, help="alternating runs of each (report the median and spread)")
    p.add_argument("--iters", type=int, default=RECIPE["iters"], help="iterations (the recipe: 2000)")
    p.add_argument("--chunk", type=int, default=RECIPE["eval_interval"],
                   help="iterations per turn (default: the evaluation interval); 0: each run whole, one after the other")
    p.add_argument("--no-torch", action="store_true", help="ours only")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "nanogpt_recipe.json"))
    args = p.parse_args(argv)
    if args.rounds < 1 or args.iters < 1 or args.chunk < 0:
        p.error(f"--rounds and --iters: expected positive integers, --chunk one >= 0; "
                f"got {args.rounds}, {args.iters}, {args.chunk}")
    r = dict(RECIPE, iters=args.iters)
    data, V = stream()
    runs = {"ours": [], "pytorch": []}
    builders = {"ours": ours, "pytorch": pytorch} if not args.no_torch and have_torch() else {"ours": ours}
    chunk = args.chunk or r["iters"]
    for k in range(args.rounds):
        load = os.getloadavg()[0]
        gens = {name: build(r, data, V, seed=1337)(chunk) for name, build in builders.items()}  # built, not run
        if args.chunk:
            done = take_turns(gens, chunk, first=k)
        else:  # one after the other, the order alternating between rounds
            order = list(gens) if k % 2 == 0 else list(gens)[::-1]
            done = {}
            for name in order:
                done.update(take_turns({name: gens[name]}, chunk))
        for name, (seconds, val) in done.items():
            runs[name].append({"seconds": seconds, "val": val, "load": [load, os.getloadavg()[0]]})
            print(f"{name:8s} {seconds:7.1f} s  val {val:.4f}  (load {load:.2f} -> {os.getloadavg()[0]:.2f})", flush=True)
    result = {"recipe": r, "chunk": args.chunk, "runs": runs}
    if runs["pytorch"]:
        ours_s = float(np.median([x["seconds"] for x in runs["ours"]]))
        torch_s = float(np.median([x["seconds"] for x in runs["pytorch"]]))
        result["time_ratio_ours_over_pytorch"] = ours_s / torch_s
        print(f"ours / pytorch wall time: {ours_s / torch_s:.2f} (median of {args.rounds}); "
              f"val {np.median([x['val'] for x in runs['ours']]):.4f} vs {np.median([x['val'] for x in runs['pytorch']]):.4f}")
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
