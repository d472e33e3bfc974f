"""Batch-1 greedy decoding of GPT-2 124M: ours (float32, int8), Hugging Face transformers on PyTorch,
and the memory-bandwidth bound, all measured in one run; plus the perplexity cost of int8.

    python benchmarks/bench_decode.py                       # 3 rounds, writes benchmarks/results/decode_gpt2.{json,png}
    python benchmarks/bench_decode.py --rounds 1 --new-tokens 16 --no-torch --no-quality

Speed (GPT-2 124M shapes: L=12 C=768 NH=12 V=50257 T=1024, random weights, float32, batch 1):
a prompt of --prompt-len tokens is prefilled, then --new-tokens are decoded greedily with the KV
cache; tokens/s counts the steps after the first new token (prefill excluded), through the
package's own `generation.generate_ids` (its on_token callback timestamps every token).
Variants: float32; int8 linear layers + int8 LM head (`quantize_model(head=True)`, the default);
int8 linear layers + float32 tied head (head=False). transformers: GPT2LMHeadModel from a
GPT2Config (random init), eval, no_grad, a greedy loop over past_key_values,
torch.set_num_threads(--threads), timed the same way.

The bound: decoding one token reads every weight once (the embedding and position tables only one
row each; the tied head the whole wte), plus the KV cache. Bound (tokens/s) = bandwidth / bytes
per token, where bandwidth is the best streaming read measured in this run over arrays far larger
than L3 (32 MB here): np.add.reduce of a 512 MB float32 vector (one thread) and an OpenBLAS sgemv
over a 512 MB matrix (all threads), best of several each; the larger is used.

Per round also: numpy time / numba time of the int8 op alone over one token's products (the
figure behind `backend.AUTO["int8_linear"]`).

Rounds: the variants take turns (round robin) --rounds times; ratios are taken within each round,
and the JSON keeps every round's figures, their median and spread (min, max), and the load
average before and after each round (`os.getloadavg()`: the machine is shared).

Quality (--no-quality skips): mean cross-entropy (`train.eval_loss`) and perplexity of float32 vs
int8 on held-out text: the shipped `shakespeare-char` model on tinyshakespeare's validation split
(the split it was trained with, `pretrained.VAL_SLICE`), and the GPT-2 fixture
tests/fixtures/tiny-gpt2 (a toy: random weights) on the last 20,000 characters of tinyshakespeare.

Does not: need PyTorch (--no-torch, or its column is skipped if it is not installed).
"""
import argparse
import json
import os
import statistics
import time
from pathlib import Path

from timed import set_threads  # benchmarks/timed.py


def flags():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=48)
    p.add_argument("--threads", type=int, default=None, help="BLAS / Numba / torch threads (default: every core)")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--no-quality", action="store_true")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "decode_gpt2.json"))
    return p


ARGS = flags().parse_args() if __name__ == "__main__" else None
if ARGS is not None:
    set_threads(ARGS)  # before NumPy is imported: OpenBLAS reads its thread count then

import numpy as np  # noqa: E402

# PyTorch before our kernels, so that its OpenMP runtime starts with the environment this process
# was given; Numba's kernels then run on that same runtime and policy (see bench_train.py).
try:
    import torch  # noqa: F401, E402
except ImportError:
    pass

from bench_tokenizer import best_of  # noqa: E402
from nanotransformer.generation import generate_ids  # noqa: E402
from nanotransformer.model import GPT, GPTConfig  # noqa: E402
from nanotransformer.quantize import quantize_model, weight_bytes  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GPT2 = dict(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, d_model=768)
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


def bandwidth(repeat=5, nbytes=512 << 20):
    """Streaming read bandwidth, GB/s: {"reduce": one-thread np.add.reduce, "sgemv": BLAS A @ x}."""
    v = np.ones(nbytes // 4, dtype=np.float32)
    a = np.ones((8192, nbytes // 4 // 8192), dtype=np.float32)
    x = np.ones(a.shape[1], dtype=np.float32)
    return {"reduce": nbytes / best_of(repeat, lambda: np.add.reduce(v))[0] / 1e9,
            "sgemv": a.nbytes / best_of(repeat, lambda: a @ x)[0] / 1e9}  # fmt: skip


def ours_tok_s(model, prompt, n):
    stamps = []
    generate_ids(model, prompt, n, temperature=0, on_token=lambda ids: stamps.append(time.perf_counter()))
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def hf_model(threads):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=GPT2["vocab_size"], n_positions=GPT2["block_size"], n_embd=GPT2["d_model"],
                     n_layer=GPT2["n_layer"], n_head=GPT2["n_head"])  # fmt: skip
    return GPT2LMHeadModel(cfg).eval()


def hf_tok_s(model, prompt, n):
    import torch

    stamps = []
    with torch.no_grad():
        out = model(torch.tensor(prompt[None]), use_cache=True)
        for _ in range(n):
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)  # (1, 1) greedy
            stamps.append(time.perf_counter())
            out = model(nxt, past_key_values=out.past_key_values, use_cache=True)
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def int8_op_ratio(repeat=3):
    """numpy time / numba time of `int8_linear_forward` over one token's products of GPT-2 124M
    (12 x the four block shapes, and the head), the evidence behind backend.AUTO["int8_linear"]."""
    from nanotransformer.backend import get_ops
    from nanotransformer.quantize import quantize_int8

    rng = np.random.default_rng(0)
    C, V = GPT2["d_model"], GPT2["vocab_size"]
    layers = [quantize_int8((rng.standard_normal(s) * 0.02).astype(np.float32))
              for s in [(C, 3 * C), (C, C), (C, 4 * C), (4 * C, C)]] * GPT2["n_layer"]
    layers.append(quantize_int8((rng.standard_normal((V, C)) * 0.02).astype(np.float32).T))
    x = {n: rng.standard_normal((1, n)).astype(np.float32) for n in (C, 4 * C)}
    t = {}
    for name in ("numpy", "numba"):
        f = get_ops(name).int8_linear_forward
        f(x[C], *layers[0])
        t[name] = best_of(repeat, lambda: [f(x[q.shape[0]], q, s) for q, s in layers])[0]
    return t["numpy"] / t["numba"]


def kv_bytes(T_mean):
    """KV-cache bytes read per token at mean context T_mean: 2 (k, v) x L x T x C x 4."""
    return 2 * GPT2["n_layer"] * T_mean * GPT2["d_model"] * 4


def speed(args):
    model = GPT(GPTConfig.preset("gpt2", **GPT2))
    variants = {"float32": model, "int8": quantize_model(model), "int8_f32head": quantize_model(model, head=False)}
    prompt = np.random.default_rng(0).integers(0, GPT2["vocab_size"], size=args.prompt_len)
    T_mean = args.prompt_len + args.new_tokens / 2
    info = {name: {"weight_bytes": weight_bytes(m), "bytes_per_token": weight_bytes(m) + kv_bytes(T_mean)}
            for name, m in variants.items()}  # fmt: skip
    hf = None
    if not args.no_torch:
        try:
            hf = hf_model(args.threads)
        except ImportError:
            print("transformers / torch not installed: no Hugging Face column")
    for m in variants.values():  # compile / warm up
        generate_ids(m, prompt, 3, temperature=0)
    if hf is not None:
        hf_tok_s(hf, prompt, 3)
    rounds = []
    for r in range(args.rounds):
        load0 = os.getloadavg()
        row = {"bandwidth_GBs": bandwidth()}
        for name, m in variants.items():
            row[name] = ours_tok_s(m, prompt, args.new_tokens)
        if hf is not None:
            row["transformers"] = hf_tok_s(hf, prompt, args.new_tokens)
        row["bandwidth_GBs"] = {k: max(v, row["bandwidth_GBs"][k]) for k, v in bandwidth().items()}  # before and after
        row["int8_op_numpy_over_numba"] = int8_op_ratio()
        bw = max(row["bandwidth_GBs"].values()) * 1e9
        row["bound_tok_s"] = {name: bw / info[name]["bytes_per_token"] for name in variants}
        row["of_bound"] = {name: row[name] / row["bound_tok_s"][name] for name in variants}
        row["int8_over_float32"] = row["int8"] / row["float32"]
        row["int8_f32head_over_float32"] = row["int8_f32head"] / row["float32"]
        if hf is not None:
            row["float32_over_transformers"] = row["float32"] / row["transformers"]
            row["int8_over_transformers"] = row["int8"] / row["transformers"]
        row["loadavg"] = [load0, os.getloadavg()]
        rounds.append(row)
        print(f"round {r + 1}: " + ", ".join(f"{k} {row[k]:.1f} tok/s" for k in list(variants) + ["transformers"]
                                             if k in row)
              + f"; bound f32 {row['bound_tok_s']['float32']:.1f} int8 {row['bound_tok_s']['int8']:.1f};"
              f" int8 op numpy/numba {row['int8_op_numpy_over_numba']:.1f};"
              f" bw {row['bandwidth_GBs']}; load {load0[0]:.2f} -> {row['loadavg'][1][0]:.2f}", flush=True)
    summary = {}
    for key in ["float32", "int8", "int8_f32head", "transformers", "int8_over_float32", "int8_f32head_over_float32",
                "float32_over_transformers", "int8_over_transformers", "int8_op_numpy_over_numba"]:
        vals = [row[key] for row in rounds if key in row]
        if vals:
            summary[key] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}
    for key in ("of_bound", "bound_tok_s"):
        summary[key] = {name: {"median": statistics.median(row[key][name] for row in rounds),
                               "min": min(row[key][name] for row in rounds),
                               "max": max(row[key][name] for row in rounds)} for name in variants}  # fmt: skip
    return {"config": dict(GPT2, prompt_len=args.prompt_len, new_tokens=args.new_tokens, threads=args.threads),
            "bytes": info, "rounds": rounds, "summary": summary}  # fmt: skip


def perplexities(model, ids, batch_size=16):
    from nanotransformer.train import eval_loss

    out = {}
    for name, m in (("float32", model), ("int8", quantize_model(model)), ("int8_f32head", quantize_model(model, head=False))):
        loss, n = eval_loss(m, ids, batch_size=batch_size)
        out[name] = {"loss": loss, "perplexity": float(np.exp(loss)), "tokens": n}
    for name in ("int8", "int8_f32head"):
        out[name]["perplexity_change"] = out[name]["perplexity"] / out["float32"]["perplexity"] - 1
    return out


def quality():
    from nanotransformer.data import TokenData
    from nanotransformer.hf import from_pretrained, tokenizer_from_pretrained
    from nanotransformer.pretrained import VAL_SLICE, load_pretrained

    text = SHAKESPEARE.read_text(encoding="utf-8")
    res = {}
    model, tok = load_pretrained("shakespeare-char")
    data = TokenData(np.array(tok.encode(text)), val_fraction=0.1)  # the split the model was trained with
    res["shakespeare-char"] = perplexities(model, data.split["val"][VAL_SLICE[0] : VAL_SLICE[1]])
    res["shakespeare-char"]["text"] = f"tinyshakespeare validation split [{VAL_SLICE[0]}:{VAL_SLICE[1]}]"
    fixture = ROOT / "tests" / "fixtures" / "tiny-gpt2"
    model, tok = from_pretrained(fixture), tokenizer_from_pretrained(fixture)
    res["tiny-gpt2"] = perplexities(model, np.array(tok.encode(text[-20_000:])))
    res["tiny-gpt2"]["text"] = "the last 20,000 characters of tinyshakespeare"
    for name, r in res.items():
        print(f"{name}: perplexity float32 {r['float32']['perplexity']:.4f}, int8 {r['int8']['perplexity']:.4f} "
              f"({100 * r['int8']['perplexity_change']:+.3f} %), int8 with float32 head "
              f"{r['int8_f32head']['perplexity']:.4f} ({100 * r['int8_f32head']['perplexity_change']:+.3f} %)")
    return res


def plot(result, path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    s = result["summary"]
    names = [n for n in ("transformers", "float32", "int8_f32head", "int8") if n in s]
    labels = {"transformers": "transformers\n(PyTorch, f32)", "float32": "ours f32", "int8_f32head": "ours int8\n(f32 head)",
              "int8": "ours int8\n(int8 head)"}  # fmt: skip
    fig = Figure(figsize=(7, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    med = [s[n]["median"] for n in names]
    err = [[s[n]["median"] - s[n]["min"] for n in names], [s[n]["max"] - s[n]["median"] for n in names]]
    ax.bar(range(len(names)), med, yerr=err, capsize=4, color=["#999", "#4477aa", "#66aacc", "#228833"][-len(names):])
    for i, n in enumerate(names):
        if n in s["bound_tok_s"]:
            b = s["bound_tok_s"][n]["median"]
            ax.hlines(b, i - 0.4, i + 0.4, colors="k", linestyles="--")
            ax.text(i, b, f"bound {b:.0f}", ha="center", va="bottom", fontsize=8)
        ax.text(i + 0.05, s[n]["max"], f"{med[i]:.1f}", ha="left", va="bottom", fontsize=9)
    ax.set_xticks(range(len(names)), [labels[n] for n in names])
    ax.set_ylabel("tokens / s (greedy, batch 1)")
    loads = [row["loadavg"][0][0] for row in result["rounds"]] + [row["loadavg"][1][0] for row in result["rounds"]]
    ax.set_title(f"GPT-2 124M decoding, {result['config']['threads']} thread(s), {len(result['rounds'])} rounds "
                 f"(bars: median, min-max), load {min(loads):.1f}-{max(loads):.1f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    args = ARGS
    args.threads = args.threads or os.cpu_count()
    import numba

    numba.set_num_threads(args.threads)
    result = speed(args)
    if not args.no_quality:
        result["quality"] = quality()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    plot(result, out.with_suffix(".png"))
    print(json.dumps(result["summary"], indent=1))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
