"""The `nanotransformer` command: help, train -> generate -> eval, resume, and clean errors."""
import json
import subprocess
import sys

import pytest

from nanotransformer.cli import build_parser, main

TEXT = "to be or not to be, that is the question.\n" * 60
TINY = ["--block-size", "16", "--n-layer", "1", "--n-head", "2", "--d-model", "16", "--batch-size", "4",
        "--eval-interval", "5", "--eval-iters", "2", "--no-progress"]


@pytest.fixture(autouse=True)
def numpy_backend(monkeypatch):
    monkeypatch.setenv("NANOTRANSFORMER_BACKEND", "numpy")


@pytest.fixture
def corpus(tmp_path):
    p = tmp_path / "hamlet.txt"
    p.write_text(TEXT, encoding="utf-8")
    return p


@pytest.fixture
def trained(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    assert main(["train", str(corpus), *TINY, "--max-steps", "10", "--out", str(out), "--sample-tokens", "40"]) == 0
    return out, capsys.readouterr()


def run(argv, capsys):
    code = main(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_help_lists_every_flag(capsys):
    for sub, flags in {
        "train": ["--tokenizer", "--vocab-size", "--block-size", "--n-layer", "--n-head", "--d-model", "--dropout",
                  "--no-bias", "--pos", "--batch-size", "--max-steps", "--lr", "--min-lr", "--warmup",
                  "--weight-decay", "--grad-clip", "--eval-interval", "--eval-iters", "--out", "--resume", "--seed",
                  "--backend", "--sample-tokens", "--val-fraction", "DATA"],
        "generate": ["--checkpoint", "--prompt", "--max-new-tokens", "--temperature", "--top-k", "--top-p",
                     "--num-samples", "--num-beams", "--length-penalty", "--stop", "--seed", "--backend"],
        "eval": ["--checkpoint", "FILE", "--batch-size"],
    }.items():
        with pytest.raises(SystemExit) as e:
            main([sub, "--help"])
        assert e.value.code == 0
        text = capsys.readouterr().out
        assert all(f in text for f in flags), [f for f in flags if f not in text]
    with pytest.raises(SystemExit):
        main(["--help"])
    top = capsys.readouterr().out
    assert all(c in top for c in ("train", "generate", "eval"))


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
    (["train", "{tmp}/small.txt", "--n-head", "3", "--d-model", "16"], "n_head: expected a divisor"),
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
    assert code == 1 and f"{weights}: not a readable safetensors file" in err
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
