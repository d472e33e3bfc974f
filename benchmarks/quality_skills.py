"""Quality bar of instruction tuning: the default `nanotransformer sft skills` run (a fresh
character-level GPT, no flags but --out) must finish in at most 10 minutes on this 2-core CPU and
reach >= 90 % exact match on held-out 2-digit addition and >= 75 % over all skills (greedy
answers to the test split, whose numbers and word lists never occur in training).

    python benchmarks/quality_skills.py                 # results in runs/quality_skills/
    python benchmarks/quality_skills.py --extra --max-steps 1000   # flags passed on to `sft`
    python benchmarks/quality_skills.py --ship          # also: the shipped model "skills-chat"

Writes runs/quality_skills/{results.json, skills.png} beside the checkpoint and loss curve, and
prints the wall time of the run, the load average before and after, and the exact match per skill
(EVAL_PER_SKILL test questions each, the `eval ... skills` figures). --ship also writes the
model, weights only (no optimiser moments), to nanotransformer/data/pretrained/skills-chat/ with
training.json and a README, and prints the sha256 lines for `pretrained.PRETRAINED`.
"""
import argparse
import json
import os
import sys
import time


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/quality_skills")
    p.add_argument("--ship", action="store_true", help="write the package's skills-chat model from this run")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more `sft` flags (after everything else)")
    args = p.parse_args(argv)

    from nanotransformer.checkpoint import load_checkpoint
    from nanotransformer.cli import main as cli
    from nanotransformer.cli_chat import EVAL_PER_SKILL, skills_scores

    load_start = os.getloadavg()
    t0 = time.perf_counter()
    code = cli(["sft", "skills", "--out", args.out, "--overwrite", "--no-progress", *args.extra])
    seconds = time.perf_counter() - t0
    load_end = os.getloadavg()
    if code:
        return code
    ckpt = load_checkpoint(args.out)
    scores = skills_scores(ckpt.model, ckpt.tokenizer, EVAL_PER_SKILL)
    per = {s: c / n for s, (c, n) in scores.items()}
    overall = sum(c for c, _ in scores.values()) / sum(n for _, n in scores.values())
    ok = seconds <= 600 and per.get("add2", 0) >= 0.9 and overall >= 0.75
    results = {"seconds": round(seconds, 1), "load_start": load_start, "load_end": load_end, "flags": args.extra,
               "exact_match": per, "overall": overall, "per_skill": EVAL_PER_SKILL, "step": ckpt.step,
               "params": ckpt.model.num_params(), "bar_met": ok}  # fmt: skip
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    _plot(per, overall, os.path.join(args.out, "skills.png"), f"sft skills: {seconds / 60:.1f} min, step {ckpt.step}")
    if args.ship:
        ship(ckpt, results)
    print(f"wall time {seconds:.0f} s (load {load_start[0]:.2f} -> {load_end[0]:.2f}); exact match "
          + ", ".join(f"{s} {v:.1%}" for s, v in per.items()) + f"; overall {overall:.1%}; bar met: {ok}")
    return 0


def ship(ckpt, results):
    """The run's model as package data: nanotransformer/data/pretrained/skills-chat/."""
    from timed import ship_checkpoint  # benchmarks/timed.py

    from nanotransformer.pretrained import PRETRAINED_DIR

    out = PRETRAINED_DIR / "skills-chat"
    meta = {"name": "skills-chat", "data": ckpt.meta.get("data"), "exact_match": results["exact_match"]}
    results = {**results, "files": ship_checkpoint(out, ckpt.model, ckpt.tokenizer, ckpt.step, meta)}
    (out / "training.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    c, em = ckpt.model.config, results["exact_match"]
    (out / "README.md").write_text(f"""# skills-chat

The default `nanotransformer sft skills` run, shipped so that the notebooks of chapters 18 and 19
talk to (and preference-tune) a model that has learned something.
`nanotransformer.pretrained.load_pretrained("skills-chat")` returns `(model, tokenizer)` after
checking both files' sha256; the tokenizer has the chat tokens.

- Model: {ckpt.model.num_params():,} parameters, L={c.n_layer}, NH={c.n_head}, C={c.d_model}, T={c.block_size},
  character-level ({ckpt.tokenizer.vocab_size} ids with the 4 chat tokens), float32.
- Training: `python benchmarks/quality_skills.py --ship`: {ckpt.step:,} steps of 32 packed rows,
  {results['seconds']:.0f} s of wall clock, load average {results['load_start'][0]:.2f} at the start and
  {results['load_end'][0]:.2f} at the end (2 cores).
- Exact match on the held-out test split ({results['per_skill']} questions per skill): """
                                     + ", ".join(f"{k} {v:.1%}" for k, v in em.items())
                                     + f"; overall {results['overall']:.1%}.\n\nFigures in full: `training.json`.\n",
                                     encoding="utf-8")  # fmt: skip
    print("sha256 for nanotransformer/pretrained.py::PRETRAINED:")
    for f, v in results["files"].items():
        print(f'    "{f}": "{v["sha256"]}",  # {v["bytes"]:,} bytes')


def _plot(per, overall, path, title):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    names = list(per) + ["overall"]
    vals = [per[s] for s in per] + [overall]
    ax.bar(names, [100 * v for v in vals], color=["tab:blue"] * len(per) + ["tab:green"])
    for i, v in enumerate(vals):
        ax.text(i, 100 * v + 1, f"{100 * v:.0f}", ha="center", fontsize=8)
    ax.axhline(90, color="tab:red", lw=0.8, ls="--")
    ax.axhline(75, color="tab:green", lw=0.8, ls="--")
    ax.set_ylim(0, 105)
    ax.set_ylabel("exact match on held-out test (%)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    sys.exit(main())
