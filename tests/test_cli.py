"""The `nanotransformer` command: help, train -> generate -> eval for every model kind (gpt, bert,
seq2seq, the fine-tuned classifier), --stop-after + --resume bit for bit, backend parity, and clean
errors."""
import hashlib
import json
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import CLI_TEXT, run_cli

from nanotransformer.cli import build_parser, main

TEXT = CLI_TEXT  # the `corpus` fixture's text (conftest.py)
run = run_cli
TINY = ["--block-size", "16", "--n-layer", "1", "--n-head", "2", "--d-model", "16", "--batch-size", "4",
        "--eval-interval", "5", "--eval-iters", "2", "--no-progress"]


@pytest.fixture(autouse=True)
def numpy_backend(monkeypatch):
    monkeypatch.setenv("NANOTRANSFORMER_BACKEND", "numpy")


@pytest.fixture
def trained(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    assert main(["train", str(corpus), *TINY, "--max-steps", "10", "--out", str(out), "--sample-tokens", "40"]) == 0
    return out, capsys.readouterr()


def test_help_lists_every_flag(capsys):
    for sub, flags in {
        "train": ["--tokenizer", "--vocab-size", "--block-size", "--n-layer", "--n-head", "--d-model", "--dropout",
                  "--no-bias", "--pos", "--batch-size", "--max-steps", "--lr", "--min-lr", "--warmup",
                  "--weight-decay", "--grad-clip", "--eval-interval", "--eval-iters", "--out", "--resume", "--seed",
                  "--backend", "--sample-tokens", "--val-fraction", "DATA", "--model", "--label-smoothing",
                  "--beta1", "--beta2", "--eps", "--stop-after", "numbers", "--arch", "--norm", "--mlp",
                  "--n-kv-head", "--d-ff", "--rope-theta", "--bias", "--tie-embeddings", "--qk-norm"],
        "finetune": ["CHECKPOINT", "DATA", "--out", "--pool", "--train-blocks", "--test-fraction",
                     "--val-fraction", "--split-seed", "--batch-size", "--max-steps", "--lr", "--warmup",
                     "--beta1", "--beta2", "--eps", "--stop-after", "--seed", "--backend", "--no-progress"],
        "generate": ["--checkpoint", "--prompt", "--max-new-tokens", "--temperature", "--top-k", "--top-p",
                     "--num-samples", "--num-beams", "--length-penalty", "--stop", "--seed", "--backend"],
        "eval": ["--checkpoint", "FILE", "--batch-size", "--num-beams", "--seed"],
    }.items():
        with pytest.raises(SystemExit) as e:
            main([sub, "--help"])
        assert e.value.code == 0
        text = capsys.readouterr().out
        assert all(f in text for f in flags), [f for f in flags if f not in text]
    with pytest.raises(SystemExit):
        main(["--help"])
    top = capsys.readouterr().out
    assert all(c in top for c in ("train", "finetune", "generate", "eval"))


def test_train_generate_eval(trained, corpus, capsys):
    out, cap = trained
    assert "model: " in cap.out and "parameters" in cap.out
    assert "step 10: train loss" in cap.out and "final: step 10, val loss" in cap.out
    assert "sample (temperature 0.8):" in cap.out
    assert (out / "loss.png").exists() and (out / "checkpoint.json").exists()

    code, stdout, err = run(["generate", "--checkpoint", str(out), "--prompt", "to be", "--max-new-tokens", "12",
                             "--num-samples", "2", "--seed", "0", "--top-k", "5"], capsys)
    assert code == 0 and err == ""
    samples = stdout.split("-" * 40 + "\n")
    assert len(samples) == 2 and all(s.startswith("to be") and len(s.rstrip("\n")) >= 5 for s in samples)
    code2, stdout2, _ = run(["generate", "--checkpoint", str(out), "--prompt", "to be", "--max-new-tokens", "12",
                             "--num-samples", "2", "--seed", "0", "--top-k", "5"], capsys)
    assert stdout2 == stdout  # seeded
    code, stdout, _ = run(["generate", "--checkpoint", str(out), "--prompt", "to", "--num-beams", "3",
                           "--max-new-tokens", "8"], capsys)
    assert code == 0 and stdout.startswith("to")

    code, stdout, _ = run(["eval", "--checkpoint", str(out), str(corpus)], capsys)
    assert code == 0
    assert f"{corpus}: {len(TEXT) - 1:,} tokens predicted, loss " in stdout and "perplexity" in stdout


def test_resume_continues_and_refuses_a_different_model(trained, corpus, capsys):
    out, _ = trained
    code, stdout, _ = run(["train", "--resume", "--out", str(out), "--max-steps", "15", "--no-progress",
                           "--sample-tokens", "0"], capsys)
    assert code == 0 and "resuming" in stdout and "at step 10" in stdout and "final: step 15" in stdout
    assert json.loads((out / "checkpoint.json").read_text())["step"] == 15
    code, _, err = run(["train", "--resume", "--out", str(out), "--d-model", "32"], capsys)
    assert code == 1 and "--d-model: cannot change the model when resuming" in err


@pytest.mark.parametrize("argv, match", [
    (["train", "{tmp}/missing.txt"], "missing.txt: no such file"),
    (["train", "{tmp}/empty.txt"], "empty.txt: the file is empty"),
    (["train", "{tmp}/latin1.txt"], "latin1.txt: not UTF-8"),
    (["train", "{tmp}/small.txt", "--block-size", "64"], "block_size 64 needs at least 65 tokens"),
    (["train", "--resume", "--out", "{tmp}/nothing"], "no such checkpoint directory"),
    (["generate", "--checkpoint", "{tmp}/nothing"], "no such checkpoint directory"),
    (["eval", "--checkpoint", "{tmp}", "{tmp}/small.txt"], "not a checkpoint directory"),
    (["train", "{tmp}/small.txt", "--n-head", "3", "--d-model", "16"], "--n-head: expected a divisor"),
])
def test_bad_input_is_one_clear_error(tmp_path, capsys, argv, match):
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "latin1.txt").write_bytes(b"na\xefve")
    (tmp_path / "small.txt").write_text("a small text\n" * 3)
    code, stdout, err = run([a.format(tmp=tmp_path) for a in argv] + ["--no-progress"] * (argv[0] == "train"),
                            capsys)
    assert code == 1
    assert err.startswith("error: ") and match in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_corrupted_checkpoint_and_unknown_characters(trained, tmp_path, capsys):
    out, _ = trained
    weights = next(out.glob("model-*.safetensors"))
    good = weights.read_bytes()
    weights.write_bytes(good[:100])
    code, _, err = run(["generate", "--checkpoint", str(out)], capsys)
    assert code == 1 and f"{weights}: sha256 is " in err and "the weights file is corrupted or was replaced" in err
    weights.write_bytes(good)
    other = tmp_path / "other.txt"
    other.write_text("ZEBRA 123\n")
    code, _, err = run(["eval", "--checkpoint", str(out), str(other)], capsys)
    assert code == 1 and "other.txt: cannot be encoded" in err and "'Z'" in err
    code, _, err = run(["generate", "--checkpoint", str(out), "--prompt", "Zebra"], capsys)
    assert code == 1 and "--prompt: cannot be encoded" in err


def test_failed_run_never_overwrites_a_checkpoint(trained, tmp_path, capsys):
    out, _ = trained
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (tmp_path / "small.txt").write_text("tiny\n")
    code, _, err = run(["train", str(tmp_path / "small.txt"), "--out", str(out), "--no-progress"], capsys)
    assert code == 1
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_long_prompt_warns_without_a_traceback(trained, capsys):
    out, _ = trained
    code, stdout, err = run(["generate", "--checkpoint", str(out), "--prompt", "to be " * 10,
                             "--max-new-tokens", "3"], capsys)
    assert code == 0 and err.startswith("warning: prompt has 60 tokens, more than the block size 16")


def test_console_entry_point_runs_as_a_process(tmp_path):
    r = subprocess.run([sys.executable, "-m", "nanotransformer.cli", "eval", "--checkpoint", str(tmp_path),
                        str(tmp_path / "x.txt")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr
    assert build_parser().prog == "nanotransformer"


# ----------------------------------------------------------------------------- the other model kinds

SMALL = ["--n-layer", "1", "--n-head", "2", "--d-model", "16", "--batch-size", "4", "--eval-iters", "1",
         "--no-progress"]
PAIRS = "".join(f"{w}\t{w[::-1]}\n" for w in ("abc", "bca", "cab", "abba", "cc", "bac", "aab", "acb", "ba", "cba"))
REVIEWS = ["to be good", "not to be", "good or not", "the question is good", "that is not good", "be good",
           "not that", "good question", "not the question", "is good"]


@pytest.fixture
def pairs_tsv(tmp_path):
    p = tmp_path / "reverse.tsv"
    p.write_text(PAIRS, encoding="utf-8")
    return p


@pytest.fixture
def reviews(tmp_path):
    p = tmp_path / "reviews.tsv"  # label 1 = no "not"; characters from TEXT, so the char GPT encodes them
    p.write_text("".join(f"{s}\t{int('not' not in s)}\n" for s in REVIEWS * 3), encoding="utf-8")
    return p


def train_argv(kind, data, out, *extra):
    block = {"gpt": "16", "bert": "16", "seq2seq": "8"}[kind]
    return ["train", str(data), "--model", kind, *SMALL, "--block-size", block, "--out", str(out), *extra]


def test_train_bert_then_fill_and_eval(corpus, tmp_path, capsys):
    out = tmp_path / "bert"
    code, stdout, err = run(train_argv("bert", corpus, out, "--max-steps", "10", "--eval-interval", "5"), capsys)
    assert code == 0, err
    assert "model: BERT" in stdout and "step 10: train loss" in stdout and "final: step 10, val loss" in stdout
    assert "fill-mask" in stdout and "_" in stdout.split("fill-mask")[1]
    assert json.loads((out / "checkpoint.json").read_text())["kind"] == "bert"

    code, stdout, _ = run(["generate", "--checkpoint", str(out), "--prompt", "to b_ or n_t", "--top-k", "2"], capsys)
    lines = stdout.splitlines()
    assert code == 0 and len(lines) == 3 and len(lines[0]) == len("to b_ or n_t") and "_" not in lines[0]
    assert lines[1].startswith("  _ at 4: ") and lines[2].startswith("  _ at 10: ")
    code, _, err = run(["generate", "--checkpoint", str(out), "--prompt", "no blank"], capsys)
    assert code == 1 and err.startswith("error: --prompt: expected at least one _")
    code, _, err = run(["generate", "--checkpoint", str(out), "--prompt", "to b_ or not to be"], capsys)
    assert code == 1 and err.strip() == ("error: --prompt: expected at most 15 characters (the model's block size 16, "
                                         "less one for [CLS]), got 18")
    code, _, err = run(["generate", "--checkpoint", str(out), "--prompt", "t_", "--temperature", "0.5"], capsys)
    assert code == 1 and err.strip() == "error: --temperature: does not apply to a bert checkpoint"

    code, stdout, _ = run(["eval", "--checkpoint", str(out), str(corpus)], capsys)
    assert code == 0 and f"{corpus}: " in stdout and "tokens masked (seed 0), masked-LM loss" in stdout
    assert run(["eval", "--checkpoint", str(out), str(corpus)], capsys)[1] == stdout  # deterministic masking
    code, _, err = run(["eval", "--checkpoint", str(out), str(corpus), "--num-beams", "2"], capsys)
    assert code == 1 and "--num-beams: does not apply to a bert checkpoint" in err


def test_train_seq2seq_on_numbers_then_translate_and_eval(tmp_path, capsys):
    out = tmp_path / "numbers"
    code, stdout, err = run(["train", "--model", "seq2seq", *SMALL, "--max-steps", "10", "--eval-interval", "5",
                             "--out", str(out)], capsys)
    assert code == 0, err
    assert "data: numbers, 10,000 train / 500 val pairs" in stdout and "max_len=16, label smoothing 0.1" in stdout
    assert "val: exact match " in stdout and "BLEU" in stdout and "(greedy decoding of 500 held-out pairs)" in stdout
    example = stdout.splitlines()[-1]
    assert example.startswith("  ") and " -> " in example and example.split(" -> ")[0].strip().isdigit()
    meta = json.loads((out / "checkpoint.json").read_text())["meta"]["data"]
    assert meta == {"kind": "numbers", "source": "numbers", "n_train": 10_000, "n_val": 500, "max_number": 10**6,
                    "seed": 0, "val_seed": 1}

    code, stdout, _ = run(["generate", "--checkpoint", str(out), "--prompt", "4021"], capsys)
    assert code == 0 and len(stdout.splitlines()) == 1
    code, beam, _ = run(["generate", "--checkpoint", str(out), "--prompt", "4021", "--num-beams", "3"], capsys)
    assert code == 0 and len(beam.splitlines()) == 1
    code, _, err = run(["generate", "--checkpoint", str(out), "--prompt", "40x1"], capsys)
    assert code == 1 and "--prompt: cannot be encoded" in err and "'x'" in err
    code, _, err = run(["generate", "--checkpoint", str(out), "--prompt", "12", "--num-samples", "2"], capsys)
    assert code == 1 and err.strip() == "error: --num-samples: does not apply to a seq2seq checkpoint"

    code, stdout, _ = run(["eval", "--checkpoint", str(out), "numbers"], capsys)
    assert code == 0 and stdout.startswith("numbers: 500 pairs (the held-out validation pairs), exact match ")
    assert "(greedy; checkpoint" in stdout
    code, stdout, _ = run(["eval", "--checkpoint", str(out), "numbers", "--num-beams", "2"], capsys)
    assert code == 0 and "(beam search, 2 beams; checkpoint" in stdout


def test_train_seq2seq_on_a_tsv_file(pairs_tsv, tmp_path, capsys):
    out = tmp_path / "tsv"
    code, stdout, err = run(train_argv("seq2seq", pairs_tsv, out, "--max-steps", "6", "--eval-interval", "3",
                                       "--val-fraction", "0.2"), capsys)
    assert code == 0, err
    assert f"data: {pairs_tsv}, 8 train / 2 val pairs (vocab 8)" in stdout and "max_len=8" in stdout
    assert "val: exact match" in stdout and "(greedy decoding of 2 held-out pairs)" in stdout
    meta = json.loads((out / "checkpoint.json").read_text())["meta"]["data"]
    assert meta == {"kind": "tsv", "source": str(pairs_tsv.resolve()), "val_fraction": 0.2, "split_seed": 0,
                    "data_sha256": hashlib.sha256(pairs_tsv.read_bytes()).hexdigest()}
    code, stdout, _ = run(["eval", "--checkpoint", str(out), str(pairs_tsv)], capsys)
    assert code == 0 and stdout.startswith(f"{pairs_tsv.resolve()}: 2 pairs (the held-out validation pairs)")
    other = tmp_path / "other.tsv"
    other.write_text("ab\tba\nc\tc\n", encoding="utf-8")
    code, stdout, _ = run(["eval", "--checkpoint", str(out), str(other)], capsys)
    assert code == 0 and stdout.startswith(f"{other.resolve()}: 2 pairs (all pairs), exact match")
    code, stdout, _ = run(["generate", "--checkpoint", str(out), "--prompt", "abc"], capsys)
    assert code == 0 and set(stdout.strip()) <= set("abc")  # characters joined without spaces

    (tmp_path / "bad.tsv").write_text("ab\tba\n\nno tab here\n", encoding="utf-8")
    code, _, err = run(train_argv("seq2seq", tmp_path / "bad.tsv", tmp_path / "bad"), capsys)
    assert code == 1 and f"{tmp_path / 'bad.tsv'}:3: expected 'source<TAB>target'" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()
    code, _, err = run(train_argv("seq2seq", pairs_tsv, tmp_path / "short", "--block-size", "3"), capsys)
    assert code == 1 and "--block-size: the encoder-decoder's max_len 3 is too short" in err and "at least 5" in err
    code, _, err = run(["train", "--model", "seq2seq", "--val-fraction", "0.2", "--out", str(tmp_path / "x")], capsys)
    assert code == 1 and err.startswith("error: --val-fraction: does not apply to the numbers task")


@pytest.mark.parametrize("argv, match", [
    (["--model", "bert", "--pos", "sinusoidal"], "--pos: does not apply to --model bert"),
    (["--model", "seq2seq", "--tokenizer", "bpe"], "--tokenizer: does not apply to --model seq2seq"),
    (["--label-smoothing", "0.1"], "--label-smoothing: does not apply to --model gpt"),
    (["--model", "seq2seq", "--label-smoothing", "1.5"], "--label-smoothing: expected a probability in [0, 1), got '1.5'"),
    (["--beta1", "1.0"], "--beta1: expected a value in [0, 1), got '1.0'"),
    (["--beta2", "-0.1"], "--beta2: expected a value in [0, 1), got '-0.1'"),
    (["--beta2", "nan"], "--beta2: expected a value in [0, 1), got 'nan'"),
    (["--eps", "0"], "--eps: expected a positive number, got '0'"),
])
def test_flags_a_kind_does_not_take_and_bad_adamw_flags(tmp_path, capsys, argv, match):
    """A flag the kind does not take is refused by the command (status 1); a value outside the
    flag's range by the parser (status 2, a usage error); both as the one line "error: ..."."""
    code, stdout, err = run(["train", *argv, "--out", str(tmp_path / "run"), "--no-progress"], capsys)
    usage = "expected" in match
    assert code == (2 if usage else 1) and err.strip() == f"error: {match}" and not (tmp_path / "run").exists()


def test_adamw_flags_reach_the_optimiser(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", str(corpus), *TINY, "--max-steps", "2", "--beta1", "0.8", "--beta2", "0.95", "--eps",
                 "1e-6", "--out", str(out), "--sample-tokens", "0"]) == 0
    sc = json.loads((out / "checkpoint.json").read_text())
    assert (sc["meta"]["train_config"]["beta1"], sc["meta"]["train_config"]["beta2"]) == (0.8, 0.95)
    assert sc["optimizer"]["hparams"]["betas"] == [0.8, 0.95] and sc["optimizer"]["hparams"]["eps"] == 1e-6


# ----------------------------------------------------------------------------- --arch llama


def test_arch_llama_trains_generates_and_evals_and_flags_override_it(corpus, tmp_path, capsys):
    out = tmp_path / "llama"
    code, stdout, err = run(["train", str(corpus), *TINY, "--n-head", "4", "--max-steps", "6", "--arch", "llama",
                             "--out", str(out), "--sample-tokens", "20"], capsys)
    assert code == 0, err
    assert "rmsnorm, rope positions, swiglu, NKV=2, untied head, no biases" in stdout
    cfg = json.loads((out / "checkpoint.json").read_text())["config"]
    assert {k: cfg[k] for k in ("norm", "pos", "mlp", "n_kv_head", "bias", "tie_embeddings", "d_ff")} == dict(
        norm="rmsnorm", pos="rope", mlp="swiglu", n_kv_head=2, bias=False, tie_embeddings=False, d_ff=48)
    code, stdout, err = run(["generate", "--checkpoint", str(out), "--max-new-tokens", "8", "--seed", "0"], capsys)
    assert code == 0 and stdout.strip(), err
    code, stdout, err = run(["eval", str(corpus), "--checkpoint", str(out)], capsys)
    assert code == 0 and "perplexity" in stdout, err
    # flags override the preset's switches; --no-bias / --bias both exist
    out2 = tmp_path / "mixed"
    assert main(["train", str(corpus), *TINY, "--max-steps", "1", "--arch", "llama", "--n-kv-head", "1", "--bias",
                 "--tie-embeddings", "--qk-norm", "--rope-theta", "500", "--mlp", "gelu", "--out", str(out2),
                 "--sample-tokens", "0"]) == 0
    cfg = json.loads((out2 / "checkpoint.json").read_text())["config"]
    assert (cfg["n_kv_head"], cfg["bias"], cfg["tie_embeddings"], cfg["qk_norm"], cfg["rope_theta"], cfg["mlp"]) == (
        1, True, True, True, 500.0, "gelu")
    capsys.readouterr()
    # resuming checks --arch and every switch against the checkpoint
    for flags, match in ((["--arch", "gpt2"], "--arch: cannot change"), (["--qk-norm"], "--qk-norm: cannot change"),
                         (["--bias"], "--bias: cannot change"), (["--n-kv-head", "1"], "--n-kv-head: cannot change")):
        code, _, err = run(["train", "--resume", "--out", str(out), "--max-steps", "8", *flags], capsys)
        assert code == 1 and err.startswith(f"error: {match}"), (flags, err)
    code, _, err = run(["train", "--resume", "--out", str(out), "--max-steps", "7", "--arch", "llama",
                        "--no-progress", "--sample-tokens", "0"], capsys)
    assert code == 0, err
    # the exact command that started a run resumes it: flags that overrode the preset count as given
    code, _, err = run(["train", "--resume", "--out", str(out2), "--max-steps", "2", "--arch", "llama", "--n-kv-head",
                        "1", "--bias", "--tie-embeddings", "--qk-norm", "--rope-theta", "500", "--mlp", "gelu",
                        "--no-progress", "--sample-tokens", "0"], capsys)
    assert code == 0, err
    code, _, err = run(["train", "--resume", "--out", str(out2), "--max-steps", "3", "--arch", "llama"], capsys)
    assert code == 1 and "--arch: cannot change the model when resuming" in err and "llama sets mlp 'swiglu'" in err, err


def test_resume_with_arch_compares_only_the_presets_switches(corpus, tmp_path, capsys):
    """--arch on resume is checked against the checkpoint's own sizes (3 heads of 8 channels here),
    not the default config's."""
    out = tmp_path / "odd"
    assert main(["train", str(corpus), *TINY, "--n-head", "3", "--d-model", "24", "--max-steps", "2", "--out", str(out),
                 "--sample-tokens", "0"]) == 0
    capsys.readouterr()
    code, _, err = run(["train", "--resume", "--out", str(out), "--max-steps", "3", "--arch", "gpt2",
                        "--no-progress", "--sample-tokens", "0"], capsys)
    assert code == 0, err
    code, _, err = run(["train", "--resume", "--out", str(out), "--max-steps", "3", "--arch", "llama"], capsys)
    assert code == 1 and err.startswith("error: --arch: cannot change the model when resuming") and "has norm='layernorm', llama sets norm 'rmsnorm'" in err, err


@pytest.mark.parametrize("argv, match", [
    (["--n-kv-head", "3"], "--n-kv-head: expected a divisor of n_head=4, got 3"),
    (["--rope-theta", "nan"], "--rope-theta: expected a finite number > 1, got 'nan'"),
    (["--pos", "rope", "--n-head", "8", "--d-model", "8"], "--pos: 'rope' needs an even head size"),
    (["--arch", "llama", "--n-head", "8", "--d-model", "8"], "--arch llama (which sets pos='rope'): 'rope' needs an even"),
    (["--model", "bert", "--arch", "llama"], "--arch: does not apply to --model bert"),
    (["--model", "seq2seq", "--mlp", "swiglu"], "--mlp: does not apply to --model seq2seq"),
    (["--model", "bert", "--no-bias"], "--bias: does not apply to --model bert"),
    (["--arch", "mamba"], "invalid choice"),
])
def test_bad_architecture_flags_are_one_clear_error(tmp_path, capsys, argv, match):
    try:
        code, _, err = run(["train", *argv, "--out", str(tmp_path / "run"), "--no-progress"], capsys)
    except SystemExit as e:  # argparse's own usage error
        code, err = e.code, capsys.readouterr().err
    assert code != 0 and match in err and "Traceback" not in err and not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- finetune


def test_finetune_a_gpt_then_classify_and_eval(trained, reviews, tmp_path, capsys):
    gpt, _ = trained
    before = {p.name: p.read_bytes() for p in gpt.iterdir()}
    out = tmp_path / "clf"
    code, stdout, err = run(["finetune", str(gpt), str(reviews), "--out", str(out), "--max-steps", "6",
                             "--eval-interval", "3", "--eval-iters", "1", "--batch-size", "4", "--train-blocks", "0",
                             "--pool", "mean", "--no-progress"], capsys)
    assert code == 0, err
    assert "data: " in stdout and "30 sentences" in stdout and "21 train / 3 val / 6 test" in stdout
    assert "step 6: train loss" in stdout and "perplexity" not in stdout
    assert "test split (6 held-out sentences; 21 trained on):" in stdout
    assert "fine-tuned GPT (last 0 block(s) + head, mean-token pooling)" in stdout
    assert "bag-of-words logistic regression" in stdout and stdout.count("accuracy") == 2 and "F1" in stdout
    assert {p.name: p.read_bytes() for p in gpt.iterdir()} == before  # the input checkpoint is untouched
    sc = json.loads((out / "checkpoint.json").read_text())
    assert sc["kind"] == "classifier" and sc["meta"]["data"]["source"] == str(reviews.resolve())

    code, stdout, _ = run(["generate", "--checkpoint", str(out), "--prompt", "not good"], capsys)
    assert code == 0 and stdout.startswith(("negative (class 0): ", "positive (class 1): "))
    assert "p(negative) = " in stdout and "p(positive) = " in stdout
    code, stdout, _ = run(["eval", "--checkpoint", str(out), str(reviews)], capsys)
    assert code == 0 and "6 sentences (the held-out test split), accuracy " in stdout and ", F1 " in stdout
    code, _, err = run(["generate", "--checkpoint", str(out), "--prompt", "good", "--num-beams", "2"], capsys)
    assert code == 1 and err.strip() == "error: --num-beams: does not apply to a classifier checkpoint"


def test_finetune_refuses_its_input_and_non_gpt_checkpoints(trained, reviews, tmp_path, capsys):
    gpt, _ = trained
    before = {p.name: p.read_bytes() for p in gpt.iterdir()}
    code, _, err = run(["finetune", str(gpt), str(reviews), "--out", str(gpt / ".." / gpt.name)], capsys)
    assert code == 1 and err.startswith("error: --out: refusing to write over the input checkpoint")
    assert {p.name: p.read_bytes() for p in gpt.iterdir()} == before
    bert = tmp_path / "bert"
    assert main(train_argv("bert", tmp_path / "hamlet.txt", bert, "--max-steps", "1", "--sample-tokens", "0")) == 0
    capsys.readouterr()
    for ckpt, match in [(bert, "expected a GPT checkpoint to fine-tune, got a 'bert' checkpoint"),
                        (tmp_path / "nothing", "no such checkpoint directory")]:
        code, _, err = run(["finetune", str(ckpt), str(reviews), "--out", str(tmp_path / "clf")], capsys)
        assert code == 1 and match in err and len(err.strip().splitlines()) == 1
    code, _, err = run(["finetune", str(gpt), str(reviews), "--out", str(tmp_path / "clf"), "--train-blocks", "2"],
                       capsys)
    assert code == 1 and "--train-blocks: expected at most the checkpoint's 1 blocks, got 2" in err
    assert not (tmp_path / "clf").exists()


# ----------------------------------------------------------------------------- resume, backends


def _eval_lines(stdout):
    """The "step N: ..." evaluation lines without their (timing-dependent) tok/s."""
    return [re.sub(r" \([\d,]+ tok/s\)", "", ln) for ln in stdout.splitlines() if re.match(r"step \d+: ", ln)]


def _losses(out):
    return json.loads((out / "checkpoint.json").read_text())["meta"]["history"]["loss"]


@pytest.mark.parametrize("kind", ["gpt", "llama", "bert", "seq2seq", "classifier"])
def test_stop_after_then_resume_is_bit_identical(kind, corpus, pairs_tsv, reviews, tmp_path, capsys):
    """30 steps straight == 20 steps (--stop-after) + --resume to 30: the same evaluation lines and
    the same per-step training losses, bit for bit (dropout on, so the RNG state matters)."""
    arch = ["--arch", "llama"] if kind == "llama" else []
    kind = "gpt" if kind == "llama" else kind
    gpt = tmp_path / "gpt"
    if kind == "classifier":
        assert main(train_argv("gpt", corpus, gpt, "--max-steps", "3", "--sample-tokens", "0")) == 0
        capsys.readouterr()

    def train(out, *extra):
        if kind == "classifier":
            argv = ["finetune", str(gpt), str(reviews), "--out", str(out), "--batch-size", "4", "--eval-iters", "1",
                    "--no-progress"]
        else:
            argv = train_argv(kind, pairs_tsv if kind == "seq2seq" else corpus, out, "--dropout", "0.1",
                              "--sample-tokens", "0", *arch)
        code, stdout, err = run(argv + ["--max-steps", "30", "--eval-interval", "10", *extra], capsys)
        assert code == 0, err
        return stdout

    straight = train(tmp_path / "straight")
    first = train(tmp_path / "pieces", "--stop-after", "20")
    assert "stopped at step 20 of 30 (--stop-after)" in first and "final: step 20" in first
    assert json.loads((tmp_path / "pieces" / "checkpoint.json").read_text())["step"] == 20
    code, second, err = run(["train", "--resume", "--out", str(tmp_path / "pieces"), "--no-progress",
                             "--sample-tokens", "0"], capsys)
    assert code == 0, err
    assert "resuming" in second and "at step 20 of 30" in second and "final: step 30" in second
    assert _eval_lines(first) + _eval_lines(second) == _eval_lines(straight)
    assert [ln.split(":")[0] for ln in _eval_lines(straight)] == ["step 0", "step 10", "step 20", "step 30"]
    assert _losses(tmp_path / "pieces") == _losses(tmp_path / "straight") and len(_losses(tmp_path / "straight")) == 30


def test_resume_checks_the_new_flags(corpus, pairs_tsv, tmp_path, capsys):
    out = tmp_path / "s2s"
    assert main(train_argv("seq2seq", pairs_tsv, out, "--max-steps", "2", "--sample-tokens", "0")) == 0
    capsys.readouterr()
    for argv, match in [
        (["--model", "bert"], "--model: cannot change the model when resuming (the checkpoint in"),
        (["--n-layer", "2"], "--n-layer: cannot change the model when resuming"),
        (["--block-size", "16"], "--block-size: cannot change the model when resuming"),
        (["--label-smoothing", "0.2"], "--label-smoothing: cannot change the model when resuming"),
        (["--val-fraction", "0.5"], "--val-fraction: cannot change the data when resuming"),
        (["--pos", "sinusoidal"], "--pos: does not apply to a seq2seq checkpoint"),
        (["--beta1", "2"], "--beta1: expected a value in [0, 1)"),
    ]:
        code, _, err = run(["train", "--resume", "--out", str(out), *argv, "--no-progress"], capsys)
        assert code == (2 if "expected" in match else 1) and match in err, (argv, err)
    code, stdout, _ = run(["train", "--resume", "--out", str(out), "--n-layer", "1", "--label-smoothing", "0.1",
                           "--max-steps", "3", "--no-progress", "--sample-tokens", "0"], capsys)
    assert code == 0 and "resuming" in stdout and f"({pairs_tsv.resolve()}; seq2seq)" in stdout


@pytest.mark.parametrize("kind", ["bert", "seq2seq"])
def test_numba_and_numpy_backends_train_alike(kind, corpus, pairs_tsv, tmp_path, capsys):
    """A few steps with each backend give the same losses to float32 noise: rtol 1e-4, atol 1e-5 (the
    kernel-vs-twin tolerance of STYLE.md; the fused kernels sum in another order, and 5 AdamW steps
    carry that ~1e-7 difference forward without amplifying it past 1e-5)."""
    pytest.importorskip("numba")
    losses = {}
    for backend in ("numpy", "numba"):
        out = tmp_path / backend
        argv = train_argv(kind, pairs_tsv if kind == "seq2seq" else corpus, out, "--max-steps", "5",
                          "--eval-interval", "5", "--sample-tokens", "0", "--backend", backend)
        code, stdout, err = run(argv, capsys)
        assert code == 0 and f"backend {backend}" in stdout, err
        evals = [float(x) for ln in _eval_lines(stdout) for x in re.findall(r"loss (\d+\.\d+)", ln)]
        losses[backend] = (np.array(_losses(out)), np.array(evals))
    for a, b in zip(losses["numpy"], losses["numba"]):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


def test_resume_of_a_checkpoint_without_tokenizer_or_with_a_bad_config(tmp_path, capsys):
    """Checkpoints written by the library (no tokenizer) or damaged by hand: one error line."""
    from nanotransformer.checkpoint import save_checkpoint
    from nanotransformer.model import GPT, GPTConfig

    save_checkpoint(tmp_path / "ck", GPT(GPTConfig(vocab_size=12, block_size=8, n_layer=1, n_head=2, d_model=8)))
    assert main(["train", "--resume", "--out", str(tmp_path / "ck"), "--no-progress"]) == 1
    assert "has no tokenizer" in capsys.readouterr().err
    sidecar = tmp_path / "ck" / "checkpoint.json"
    obj = json.loads(sidecar.read_text())
    obj["config"] = [1]
    sidecar.write_text(json.dumps(obj))
    assert main(["train", "--resume", "--out", str(tmp_path / "ck"), "--n-layer", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "'config' entry: expected a JSON object" in err and "Traceback" not in err


@pytest.mark.parametrize("flag, value, match", [
    ("--grad-clip", "-1", "--grad-clip: expected a number >= 0"),
    ("--grad-clip", "nan", "--grad-clip: expected a number >= 0"),
    ("--min-lr", "1", "--min-lr: expected a number in [0, lr=0.003]"),
    ("--weight-decay", "nan", "--weight-decay: expected a number >= 0"),
    ("--seed", "-1", "--seed: expected a non-negative integer"),
    ("--lr", "inf", "--lr: expected a positive learning rate"),
])  # fmt: skip
def test_bad_training_values_name_the_flag_before_anything_runs(corpus, tmp_path, capsys, flag, value, match):
    code, _, err = run(["train", str(corpus), *TINY, "--out", str(tmp_path / "r"), flag, value], capsys)
    # a value out of the flag's own range is a usage error (2); min_lr above lr is found by the config (1)
    assert code == (1 if flag == "--min-lr" else 2) and match in err and "Traceback" not in err, err
    assert not (tmp_path / "r").exists()  # nothing was written
