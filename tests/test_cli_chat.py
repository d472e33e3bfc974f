"""`nanotransformer sft`, `chat`, `dpo` and `eval ... skills` (cli_chat.py): runs end to end on tiny
models, scripted chat over a pipe, resume, and bad input as one clear error."""
import io
import json

import pytest

from nanotransformer.cli import main

TINY = ["--block-size", "96", "--n-layer", "1", "--n-head", "2", "--d-model", "32", "--batch-size", "4",
        "--eval-interval", "4", "--eval-iters", "1", "--no-progress"]  # fmt: skip


@pytest.fixture(autouse=True)
def numpy_backend(monkeypatch):
    monkeypatch.setenv("NANOTRANSFORMER_BACKEND", "numpy")


def run(argv, capsys):
    code = main(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


@pytest.fixture
def sft_run(tmp_path, capsys):
    out = tmp_path / "sft"
    code, text, err = run(["sft", "skills", "--n-train", "300", "--max-steps", "8", *TINY, "--out", str(out)], capsys)
    assert code == 0, err
    return out, text


def test_sft_skills_trains_checkpoints_and_reports_exact_match(sft_run):
    out, text = sft_run
    assert "data: skills, 300 train" in text and "a fresh character-level GPT" in text
    assert "exact match on held-out skills (50 per skill): add2 " in text and "overall" in text
    assert (out / "checkpoint.json").is_file() and (out / "loss.png").is_file()


def test_sft_resume_continues_and_eval_skills(sft_run, capsys):
    out, _ = sft_run
    code, text, err = run(["sft", "skills", "--resume", "--out", str(out), "--max-steps", "12", "--no-progress"], capsys)
    assert code == 0, err
    assert "resuming" in text and "final: step 12" in text
    code, text, err = run(["eval", "--checkpoint", str(out), "skills"], capsys)
    assert code == 0, err
    assert text.startswith("exact match on held-out skills (200 per skill)")
    for argv, match in ((["--block-size", "32"], "--block-size: not with --resume"),
                        (["--n-train", "5"], "--n-train: not with --resume")):  # fmt: skip
        code, _, err = run(["sft", "skills", "--resume", "--out", str(out), *argv], capsys)
        assert code == 1 and match in err
    other = out.parent / "c.jsonl"
    other.write_text(json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}))
    code, _, err = run(["sft", str(other), "--resume", "--out", str(out)], capsys)
    assert code == 1 and "trained on skills, got c.jsonl" in err


def test_chat_over_a_pipe_prints_one_answer_per_line(sft_run, capsys, monkeypatch):
    out, _ = sft_run
    lines = "What is 2 + 3?\n/reset\nSort: b a\n\nWhat is <|end|> 1?\n/exit\nnever read\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(lines))
    code, text, err = run(["chat", "--checkpoint", str(out), "--max-new-tokens", "8"], capsys)
    assert code == 0, err
    assert len(text.splitlines()) == 3  # three user turns (the empty line and /reset are not turns)
    assert "Traceback" not in err


def test_chat_refuses_a_model_without_chat_tokens(tmp_path, capsys):
    corpus = tmp_path / "t.txt"
    corpus.write_text("to be or not to be\n" * 50)
    assert main(["train", str(corpus), "--block-size", "16", "--n-layer", "1", "--n-head", "2", "--d-model", "16",
                 "--max-steps", "2", "--eval-interval", "2", "--eval-iters", "1", "--no-progress",
                 "--sample-tokens", "0", "--out", str(tmp_path / "gpt")]) == 0  # fmt: skip
    capsys.readouterr()
    code, _, err = run(["chat", "--checkpoint", str(tmp_path / "gpt")], capsys)
    assert code == 1 and "has no chat tokens" in err and "Traceback" not in err


def test_sft_from_a_pretrained_gpt_grows_its_vocabulary(tmp_path, capsys):
    corpus = tmp_path / "t.txt"
    corpus.write_text("to be or not to be\n" * 50)  # no digits, no '?': the skills add characters
    gpt = tmp_path / "gpt"
    assert main(["train", str(corpus), "--block-size", "64", "--n-layer", "1", "--n-head", "2", "--d-model", "16",
                 "--max-steps", "2", "--eval-interval", "2", "--eval-iters", "1", "--no-progress",
                 "--sample-tokens", "0", "--out", str(gpt)]) == 0  # fmt: skip
    capsys.readouterr()
    code, text, err = run(["sft", "skills", "--from", str(gpt), "--n-train", "100", "--max-steps", "2",
                           "--batch-size", "2", "--eval-interval", "2", "--eval-iters", "1", "--no-progress",
                           "--out", str(tmp_path / "sft")], capsys)  # fmt: skip
    assert code == 0, err
    assert "vocabulary 8 -> " in text


def test_sft_on_alpaca_and_jsonl_files(tmp_path, capsys):
    alpaca = tmp_path / "a.json"
    alpaca.write_text(json.dumps([{"instruction": "say hi", "input": "", "output": "hi"},
                                  {"instruction": "say", "input": "yo", "output": "yo"}] * 5))  # fmt: skip
    chat = tmp_path / "c.jsonl"
    chat.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": "ping"},
                                                       {"role": "assistant", "content": "pong"}]})
                              for _ in range(10)))  # fmt: skip
    for data in (alpaca, chat):
        code, text, err = run(["sft", str(data), "--max-steps", "2", *TINY, "--out", str(tmp_path / data.stem)], capsys)
        assert code == 0, err
        assert "exact match" not in text  # only the skills have an answer key


def test_dpo_on_skills_reports_before_and_after(sft_run, tmp_path, capsys):
    out, _ = sft_run
    code, text, err = run(["dpo", "skills", "--from", str(out), "--n-train", "40", "--max-steps", "4",
                           "--batch-size", "4", "--eval-interval", "4", "--eval-iters", "1", "--no-progress",
                           "--out", str(tmp_path / "dpo")], capsys)  # fmt: skip
    assert code == 0, err
    assert "the model's own wrong answer is the rejected one in" in text
    assert "before: the model prefers the chosen answer in" in text and "after: the model prefers" in text
    assert text.count("exact match on held-out skills") == 2
    code, text, err = run(["eval", "--checkpoint", str(tmp_path / "dpo"), "skills"], capsys)
    assert code == 0, err


@pytest.mark.parametrize("argv, match", [
    (["sft", "missing.json", "--out", "X"], "missing.json: no such file"),
    (["sft", "skills", "--val-fraction", "0.1", "--out", "X"], "--val-fraction: skills has its own"),
    (["sft", "skills", "--lora-rank", "4", "--out", "X"], "--lora-rank: not for a fresh model"),
    (["sft", "skills", "--from", "nowhere", "--out", "X"], "nowhere: no such checkpoint directory"),
    (["sft", "skills", "--resume", "--out", "nowhere"], "nowhere: no such checkpoint directory"),
    (["chat", "--checkpoint", "nowhere"], "nowhere: no such checkpoint directory"),
    (["chat", "--checkpoint", "nowhere", "--temperature", "-1"], "--temperature: expected a number >= 0"),
    (["dpo", "skills", "--from", "nowhere", "--out", "X", "--beta", "0"], "--beta: expected a number > 0"),
    (["dpo", "bad.jsonl", "--from", "nowhere", "--out", "X"], "bad.jsonl: no such file"),
    (["dpo", "p.jsonl", "--from", "nowhere", "--out", "X", "--rejected", "rule"], "--rejected: only for DATA 'skills'"),
    (["dpo", "skills", "--from", "nowhere", "--out", "X", "--stop-after", "2"], "--stop-after: dpo runs whole"),
    (["dpo", "skills", "--from", "nowhere", "--out", "X", "--sft-weight", "-1"], "--sft-weight: expected a number >= 0"),
])  # fmt: skip
def test_bad_input_is_one_clear_error(argv, match, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(argv, capsys)
    usage = ": expected a" in match  # a value out of the flag's range: the parser's usage error
    assert code == (2 if usage else 1) and match in err and "Traceback" not in err, err


@pytest.fixture
def small_gpt(tmp_path, capsys):
    corpus = tmp_path / "t.txt"
    corpus.write_text("to be or not to be, what is 1 + 2? good food, bad service.\n" * 50)
    gpt = tmp_path / "gpt"
    assert main(["train", str(corpus), "--block-size", "96", "--n-layer", "1", "--n-head", "2", "--d-model", "16",
                 "--max-steps", "2", "--eval-interval", "2", "--eval-iters", "1", "--no-progress",
                 "--sample-tokens", "0", "--out", str(gpt)]) == 0  # fmt: skip
    capsys.readouterr()
    return gpt


def test_finetune_with_lora_saves_adapters_only_and_generate_eval_read_them(small_gpt, tmp_path, capsys):
    from nanotransformer.tasks import toy_reviews

    s, y = toy_reviews(200)
    reviews = tmp_path / "rev.txt"
    reviews.write_text("".join(f"{a.lower()}\t{b}\n" for a, b in zip(s, y)))
    out = tmp_path / "clf"
    code, text, err = run(["finetune", str(small_gpt), str(reviews), "--out", str(out), "--lora-rank", "2",
                           "--max-steps", "3", "--eval-interval", "3", "--no-progress"], capsys)  # fmt: skip
    assert code == 0, err
    assert "(LoRA rank 2 on attn,mlp)" in text and "LoRA r=2 + head" in text
    assert "the classifier's head is new; the frozen base is saved in" in text
    code, _, err = run(["finetune", str(small_gpt), str(reviews), "--out", str(tmp_path / "c2"), "--lora-rank", "2",
                        "--train-blocks", "1"], capsys)  # fmt: skip
    assert code == 1 and "--train-blocks: not with --lora-rank" in err
    code, _, err = run(["train", "--resume", "--out", str(out)], capsys)
    assert code == 1 and "holds a LoRA run" in err
    from safetensors import safe_open

    from nanotransformer.checkpoint import read_sidecar

    sc = read_sidecar(out)
    with safe_open(str(out / sc["weights"]), framework="numpy") as f:
        names = [n for n in f.keys() if not n.startswith("optim.")]
    assert names and all(".lora_" in n or n.startswith("head.") for n in names)  # the adapters (+ head) alone
    code, text, err = run(["generate", "--checkpoint", str(out), "--prompt", "good food"], capsys)
    assert code == 0 and "p(positive)" in text, err
    code, text, err = run(["eval", "--checkpoint", str(out), str(reviews)], capsys)
    assert code == 0 and "accuracy" in text, err
    # the base changes under the adapters: refused, naming the base directory
    (base,) = out.glob("base-*")
    w = base / read_sidecar(base)["weights"]
    data = bytearray(w.read_bytes())
    data[-5] ^= 1
    w.write_bytes(bytes(data))
    code, _, err = run(["eval", "--checkpoint", str(out), str(reviews)], capsys)
    assert code == 1 and "adapters were trained on base weights sha256" in err and str(base.resolve()) in err


def test_sft_from_a_checkpoint_with_lora_then_chat(small_gpt, tmp_path, capsys, monkeypatch):
    out = tmp_path / "sft"
    code, text, err = run(["sft", "skills", "--from", str(small_gpt), "--lora-rank", "4", "--lora-targets", "attn",
                           "--n-train", "100", "--max-steps", "3", "--batch-size", "2", "--eval-interval", "3",
                           "--eval-iters", "1", "--no-progress", "--out", str(out)], capsys)  # fmt: skip
    assert code == 0, err
    assert "the chat tokens grew the vocabulary; the frozen base is saved in" in text
    monkeypatch.setattr("sys.stdin", io.StringIO("What is 2 + 3?\n"))
    code, text, err = run(["chat", "--checkpoint", str(out), "--max-new-tokens", "4"], capsys)
    assert code == 0 and len(text.splitlines()) == 1, err
    code, text, err = run(["sft", "skills", "--resume", "--out", str(out), "--max-steps", "4", "--no-progress"], capsys)
    assert code == 0 and "final: step 4" in text, err
    code, _, err = run(["sft", "skills", "--from", str(small_gpt), "--lora-rank", "2", "--lora-targets", "embeddings",
                        "--out", str(tmp_path / "x")], capsys)  # fmt: skip
    assert code == 1 and "--lora-targets" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()  # a refused run writes nothing
    # ... and a failed rerun into the directory of a good LoRA run leaves that run loadable
    code, _, err = run(["sft", "skills", "--from", str(small_gpt), "--lora-rank", "2", "--lora-targets", "bogus",
                        "--n-train", "100", "--out", str(out), "--overwrite"], capsys)  # fmt: skip
    assert code == 1 and "--lora-targets" in err
    monkeypatch.setattr("sys.stdin", io.StringIO("What is 2 + 3?\n"))
    code, _, err = run(["chat", "--checkpoint", str(out), "--max-new-tokens", "4"], capsys)
    assert code == 0, err
    # a rerun of the same base reuses its directory (named by content): no second copy
    code, _, err = run(["sft", "skills", "--from", str(small_gpt), "--lora-rank", "4", "--n-train", "100",
                        "--max-steps", "1", "--batch-size", "2", "--eval-interval", "1", "--eval-iters", "1",
                        "--no-progress", "--out", str(out), "--overwrite"], capsys)  # fmt: skip
    assert code == 0, err
    assert len(list(out.glob("base-*"))) == 1
    # train --resume does not continue an sft run; the --stop-after hint names sft
    code, _, err = run(["train", "--resume", "--out", str(out)], capsys)
    assert code == 1 and "which `train` does not continue" in err and "sft DATA --resume" in err
    for argv, match in ((["--block-size", "32"], "--block-size: not with --from"),):
        code, _, err = run(["sft", "skills", "--from", str(small_gpt), "--out", str(tmp_path / "y"), *argv], capsys)
        assert code == 1 and match in err
