"""Hostile input, by the categories of the reliability issue: every flag, file and field is
validated before any work; resume never silently changes the run; checkpoints are checksummed
and locked; nothing is lost on a failure; absurd sizes are refused up front; every error is one
line naming what is wrong. (Tokenizer robustness, category 6, is in test_tokenizer.py.)

Each case states what used to happen on main 9e2c313 when it was found."""
import errno
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from nanotransformer import checkpoint as ck
from nanotransformer.cli import main

from conftest import CLI_TEXT as TEXT
from conftest import run_cli as run


@pytest.fixture(autouse=True)
def numpy_backend(monkeypatch):
    monkeypatch.setenv("NANOTRANSFORMER_BACKEND", "numpy")


TINY = ["--block-size", "16", "--n-layer", "1", "--n-head", "2", "--d-model", "16", "--batch-size", "4",
        "--eval-interval", "2", "--eval-iters", "1", "--no-progress", "--sample-tokens", "0"]


@pytest.fixture
def run_dir(tmp_path, corpus, capsys):
    """A finished 4-step GPT run (checkpoint + loss.png)."""
    out = tmp_path / "run"
    assert main(["train", str(corpus), *TINY, "--max-steps", "4", "--out", str(out)]) == 0
    capsys.readouterr()
    return out


def one_error(err):
    """The whole of stderr is one `error: ...` line."""
    lines = err.strip().splitlines()
    return len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err


def snapshot(d):
    return {p.name: p.read_bytes() for p in d.iterdir() if p.name != ck.LOCK}


# ----------------------------------------------------------------------------- 1. numeric flags


@pytest.mark.parametrize("argv, match", [
    # before: trained with gradient ascent (val 4.29 -> 6.62) / silently no clipping
    (["train", "--grad-clip", "-1"], "--grad-clip: expected a number >= 0"),
    (["train", "--grad-clip", "nan"], "--grad-clip: expected a number >= 0"),
    (["train", "--weight-decay", "nan"], "--weight-decay: expected a number >= 0"),  # before: "loss is nan"
    (["train", "--seed", "-1"], "--seed: expected a non-negative integer, got '-1'"),
    (["train", "--lr", "inf"], "--lr: expected a positive learning rate"),
    (["train", "--lr", "0"], "--lr: expected a positive learning rate"),
    (["train", "--min-lr", "-1"], "--min-lr: expected a number >= 0"),
    (["train", "--batch-size", "1e9"], "--batch-size: expected a positive integer, got '1e9'"),
    (["train", "--batch-size", "0"], "--batch-size: expected a positive integer"),
    (["train", "--max-steps", "2.5"], "--max-steps: expected a positive integer"),
    (["train", "--dropout", "1"], "--dropout: expected a probability in [0, 1)"),
    (["train", "--dropout", "nan"], "--dropout: expected a probability in [0, 1)"),
    (["train", "--val-fraction", "1.5"], "--val-fraction: expected a fraction in (0, 1)"),
    (["train", "--val-fraction", "0"], "--val-fraction: expected a fraction in (0, 1)"),
    (["train", "--rope-theta", "inf"], "--rope-theta: expected a finite number > 1"),
    (["train", "--d-model", "-8"], "--d-model: expected a positive integer"),
    (["train", "--eps=-1e-8"], "--eps: expected a positive number"),
    (["generate", "--checkpoint", "x", "--temperature", "nan"], "--temperature: expected a number >= 0"),
    (["generate", "--checkpoint", "x", "--top-p", "1.5"], "--top-p: expected a probability in (0, 1]"),
    (["generate", "--checkpoint", "x", "--seed", "-3"], "--seed: expected a non-negative integer"),
    (["generate", "--checkpoint", "x", "--length-penalty", "inf"], "--length-penalty: expected a finite number"),
    (["eval", "x", "--checkpoint", "y", "--seed", "-1"], "--seed: expected a non-negative integer"),
    (["finetune", "a", "b", "--out", "c", "--test-fraction", "nan"], "--test-fraction: expected a fraction in (0, 1)"),
    (["finetune", "a", "b", "--out", "c", "--split-seed", "-1"], "--split-seed: expected a non-negative integer"),
    (["finetune", "a", "b", "--out", "c", "--lora-rank", "0"], "--lora-rank: expected a positive integer"),
    (["chat", "--checkpoint", "x", "--top-p", "0"], "--top-p: expected a probability in (0, 1]"),
    (["dpo", "skills", "--from", "x", "--out", "y", "--beta", "nan"], "--beta: expected a number > 0"),
    (["sft", "skills", "--out", "y", "--lora-alpha", "-2"], "--lora-alpha: expected a number > 0"),
])  # fmt: skip
def test_numeric_flags_are_checked_where_they_are_typed(tmp_path, capsys, monkeypatch, argv, match):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(argv, capsys)
    assert code == 2 and one_error(err) and match in err, err
    assert list(tmp_path.iterdir()) == []  # nothing was written


def test_min_lr_above_lr_is_refused_before_any_work(corpus, tmp_path, capsys):
    # before: the learning rate rose along the "decay"
    code, _, err = run(["train", str(corpus), *TINY, "--lr", "1e-3", "--min-lr", "1e-2", "--out", str(tmp_path / "r")],
                       capsys)
    assert code == 1 and one_error(err) and "--min-lr: expected a number in [0, lr=0.001]" in err
    assert not (tmp_path / "r").exists()


def test_a_bad_backend_in_the_environment_names_the_variable(corpus, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NANOTRANSFORMER_BACKEND", "cuda")
    code, _, err = run(["train", str(corpus), *TINY, "--out", str(tmp_path / "r")], capsys)
    assert code == 1 and one_error(err) and "$NANOTRANSFORMER_BACKEND (the environment variable)" in err
    assert "got 'cuda'" in err


def test_python_api_refuses_values_that_would_silently_be_wrong():
    from nanotransformer.layers import layernorm_forward, rmsnorm_forward
    from nanotransformer.model import GPT, GPTConfig
    from nanotransformer.train import TrainConfig, eval_loss

    x, w, b = np.ones((2, 4)), np.ones(4), np.zeros(4)
    for eps in (float("nan"), float("inf"), -1.0, "1e-5"):
        with pytest.raises(ValueError, match="^eps: expected a finite number"):  # before: all-NaN output
            layernorm_forward(x, w, b, eps=eps)
        with pytest.raises(ValueError, match="^eps: expected a finite number"):
            rmsnorm_forward(x, w, eps=eps)
    model = GPT(GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=2, d_model=8))
    for ids, match in [([3.7, 4.2, 1.0], "dtype float64"), ([True, False], "dtype bool"),  # before: 3.7 -> 3
                       (np.array([[1, 2, 3]]), "1-D"), ([1, 2, 10], r"ids in \[0, 10\)")]:
        with pytest.raises(ValueError, match="^ids: expected"):
            eval_loss(model, ids)
    with pytest.raises(ValueError, match="^grad_clip: expected a number >= 0"):
        TrainConfig(grad_clip=float("nan"))
    with pytest.raises(ValueError, match="^seed: expected a non-negative integer"):
        TrainConfig(seed=-1)


# ----------------------------------------------------------------------------- 2. resume


@pytest.mark.parametrize("argv, match", [
    (["--no-bias"], "--bias: cannot change the model when resuming"),  # before: ignored
    (["--tokenizer", "bpe"], "--tokenizer: cannot change the data when resuming"),  # before: ignored
    (["--vocab-size", "300"], "--vocab-size: does not apply to the data of this gpt checkpoint"),  # char run
    (["--val-fraction", "0.3"], "--val-fraction: cannot change the data when resuming"),  # before: ignored
    (["--d-model", "32"], "--d-model: cannot change the model when resuming"),
    (["--arch", "llama"], "--arch: cannot change the model when resuming"),
    (["--model", "bert"], "--model: cannot change the model when resuming"),
])  # fmt: skip
def test_resume_refuses_every_changed_model_and_data_flag(run_dir, capsys, argv, match):
    before = snapshot(run_dir)
    code, _, err = run(["train", "--resume", "--out", str(run_dir), "--max-steps", "6", *argv], capsys)
    assert code == 1 and one_error(err) and match in err, err
    assert snapshot(run_dir) == before


def test_vocab_size_without_bpe_is_refused(corpus, tmp_path, capsys):
    code, _, err = run(["train", str(corpus), *TINY, "--vocab-size", "300", "--out", str(tmp_path / "r")], capsys)
    assert code == 1 and one_error(err) and "--vocab-size: only for --tokenizer bpe" in err


def test_resume_on_changed_data_is_refused_and_on_a_copy_is_allowed(run_dir, corpus, tmp_path, capsys):
    sc = json.loads((run_dir / ck.SIDECAR).read_text())
    assert len(sc["meta"]["data"]["data_sha256"]) == 64
    copy = tmp_path / "moved.txt"
    copy.write_bytes(corpus.read_bytes())
    corpus.write_text(TEXT + "an extra line\n", encoding="utf-8")  # before: resumed on the new text silently
    before = snapshot(run_dir)
    code, _, err = run(["train", "--resume", "--out", str(run_dir), "--max-steps", "6"], capsys)
    assert code == 1 and one_error(err) and "has changed since the run" in err and "sha256" in err
    corpus.unlink()
    code, _, err = run(["train", "--resume", "--out", str(run_dir), "--max-steps", "6"], capsys)
    assert code == 1 and one_error(err) and "no longer exists" in err
    other = tmp_path / "other.txt"
    other.write_text(TEXT.upper(), encoding="utf-8")
    code, _, err = run(["train", str(other), "--resume", "--out", str(run_dir), "--max-steps", "6"], capsys)
    assert code == 1 and "has changed since the run" in err
    assert snapshot(run_dir) == before
    code, out, err = run(["train", str(copy), "--resume", "--out", str(run_dir), "--max-steps", "6"], capsys)
    assert code == 0 and "resuming" in out, err  # the same content elsewhere is the same data


def test_a_changed_file_in_a_data_directory_is_seen(tmp_path, capsys):
    d = tmp_path / "texts"
    d.mkdir()
    (d / "a.txt").write_text(TEXT, encoding="utf-8")
    (d / "b.md").write_text(TEXT, encoding="utf-8")
    out = tmp_path / "r"
    assert main(["train", str(d), *TINY, "--max-steps", "2", "--out", str(out)]) == 0
    (d / "b.md").write_text(TEXT + "more\n", encoding="utf-8")
    code, _, err = run(["train", "--resume", "--out", str(out), "--max-steps", "4"], capsys)
    assert code == 1 and "has changed since the run" in err


# ----------------------------------------------------------------------------- 3. checkpoint integrity


def test_corrupted_checkpoints_are_one_error_naming_the_file_or_field(run_dir, tmp_path, capsys):
    import shutil

    cases = []
    # a flipped bit in the tensor data (before: loaded silently)
    d = tmp_path / "flip"
    shutil.copytree(run_dir, d)
    w = next(d.glob("model-*.safetensors"))
    raw = bytearray(w.read_bytes())
    raw[-5] ^= 0x10
    w.write_bytes(bytes(raw))
    cases.append((d, "sha256"))
    for field, value, match in [("config", None, "'config'"), ("rng_state", "abc", "'rng_state'"),
                                ("meta", None, "'meta'"), ("step", -3, "'step'")]:
        d = tmp_path / field
        shutil.copytree(run_dir, d)
        sc = json.loads((d / ck.SIDECAR).read_text())
        sc[field] = value
        (d / ck.SIDECAR).write_text(json.dumps(sc))
        cases.append((d, match))
    for d, match in cases:
        code, _, err = run(["generate", "--checkpoint", str(d), "--max-new-tokens", "2"], capsys)
        assert code == 1 and one_error(err) and match in err, (d.name, err)


# ----------------------------------------------------------------------------- 4. concurrency, partial failure

HOLD = textwrap.dedent("""
    import sys, time
    from nanotransformer.checkpoint import locked
    with locked(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(60)
""")


def test_a_second_writer_fails_at_once_naming_the_directory(run_dir, capsys):
    # before: two runs on one --out left a sidecar pointing at a file the other had deleted
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(run_dir)
        code, _, err = run(["train", "--resume", "--out", str(run_dir), "--max-steps", "8"], capsys)
        assert code == 1 and one_error(err) and f"{run_dir}: another run is writing to this directory" in err
        assert f"pid {holder.pid}" in err
        assert snapshot(run_dir) == before
    finally:
        holder.kill()
        holder.wait()
    code, _, err = run(["train", "--resume", "--out", str(run_dir), "--max-steps", "6"], capsys)
    assert code == 0, err  # the lock died with its process: no stale lock


def test_the_lock_is_reentrant_in_a_process_and_released(tmp_path):
    d = tmp_path / "d"
    with ck.locked(d):
        with ck.locked(d):  # a command locks, then Trainer.fit locks again
            assert str(d.resolve()) in ck._HELD
        assert str(d.resolve()) in ck._HELD
    assert str(d.resolve()) not in ck._HELD
    out = subprocess.run([sys.executable, "-c", HOLD.replace("time.sleep(60)", "pass"), str(d)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "locked" in out.stdout


def test_a_diverged_run_leaves_the_checkpoint_and_the_loss_curve_untouched(run_dir, capsys):
    before = snapshot(run_dir)
    assert "loss.png" in before
    code, _, err = run(["train", "--resume", "--out", str(run_dir), "--max-steps", "40", "--lr", "1e6",
                        "--warmup", "0", "--no-progress"], capsys)  # fmt: skip
    assert code == 1 and one_error(err) and "training stopped" in err, err
    assert snapshot(run_dir) == before  # before: the diverged curve overwrote loss.png


def test_a_fresh_run_into_a_checkpoint_needs_overwrite(run_dir, corpus, capsys):
    before = snapshot(run_dir)
    code, _, err = run(["train", str(corpus), *TINY, "--max-steps", "2", "--out", str(run_dir)], capsys)
    assert code == 1 and one_error(err) and "already holds a checkpoint" in err and "--overwrite" in err
    assert snapshot(run_dir) == before  # before: a note, then replaced
    code, out, err = run(["train", str(corpus), *TINY, "--max-steps", "2", "--out", str(run_dir), "--overwrite"],
                         capsys)
    assert code == 0 and "(--overwrite)" in out, err
    assert json.loads((run_dir / ck.SIDECAR).read_text())["step"] == 2


@pytest.mark.parametrize("command", [["train"], ["sft", "skills"], ["finetune", "CKPT", "DATA"],
                                     ["dpo", "skills", "--from", "CKPT"]])
def test_out_pointing_at_a_file_fails_before_any_work(tmp_path, capsys, command):
    f = tmp_path / "a-file"
    f.write_text("keep me")
    code, _, err = run([*command, "--out", str(f), "--no-progress"], capsys)
    assert code == 1 and one_error(err) and f"--out: {f} is an existing file" in err, err
    assert f.read_text() == "keep me"


def test_disk_full_during_a_save_is_one_error_and_the_old_checkpoint_loads(run_dir, capsys, monkeypatch):
    import safetensors.numpy

    before = snapshot(run_dir)

    def full(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\0" * 100)  # a partial file, as a full disk leaves
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.numpy, "save_file", full)
    code, _, err = run(["train", "--resume", "--out", str(run_dir), "--max-steps", "6", "--no-progress"], capsys)
    assert code == 1 and one_error(err), err
    assert f"{run_dir}: could not save the checkpoint (No space left on device); the checkpoint already there is kept" in err
    assert snapshot(run_dir) == before  # no temporary file left either
    assert ck.load_checkpoint(run_dir).step == 4


def test_safetensors_own_error_is_one_error_too(run_dir, capsys, monkeypatch):
    import safetensors.numpy

    class SafetensorError(Exception):
        pass

    def broken(tensors, filename, metadata=None):
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")

    monkeypatch.setattr(safetensors.numpy, "save_file", broken)
    code, _, err = run(["train", "--resume", "--out", str(run_dir), "--max-steps", "6", "--no-progress"], capsys)
    assert code == 1 and one_error(err) and "could not save the checkpoint (Error while serializing" in err, err
    assert ck.load_checkpoint(run_dir).step == 4


def test_orphaned_temporary_files_are_cleaned_by_the_next_save(run_dir, capsys):
    orphans = [run_dir / ".model-0000009-abcdef.safetensors.tmp", run_dir / f".{ck.SIDECAR}.abcdef.tmp"]
    for p in orphans:
        p.write_bytes(b"left by a killed save")
    keep = run_dir / "notes.txt"
    keep.write_text("mine")
    assert main(["train", "--resume", "--out", str(run_dir), "--max-steps", "6", "--no-progress",
                 "--sample-tokens", "0"]) == 0  # fmt: skip
    assert not any(p.exists() for p in orphans) and keep.read_text() == "mine"
    assert len(list(run_dir.glob("model-*.safetensors"))) == 1


# ----------------------------------------------------------------------------- 5. resource bounds


@pytest.mark.parametrize("argv, match", [
    (["--n-layer", "100000000"], "--n-layer 100000000: a model of"),
    (["--d-model", "1000000", "--n-head", "4"], "--d-model 1000000, --n-head 4: a model of"),
    (["--batch-size", "1000000000"], "--batch-size 1000000000: training on 1,000,000,000 rows of 64 tokens per forward"),
    (["--model", "bert", "--n-layer", "10000000"], "--n-layer 10000000: a model of"),
])  # fmt: skip
def test_absurd_sizes_are_refused_up_front_naming_the_flag(corpus, tmp_path, capsys, argv, match):
    import time

    t0 = time.perf_counter()
    code, _, err = run(["train", str(corpus), "--no-progress", *argv, "--out", str(tmp_path / "r")], capsys)
    assert code == 1 and one_error(err) and match in err and "more than this machine's" in err, err
    assert time.perf_counter() - t0 < 20  # before: a hang, or _ArrayMemoryError minutes later
    assert not (tmp_path / "r").exists()


def test_the_parameter_count_of_the_estimate_is_exact():
    from nanotransformer.bert import BERT, BERTConfig
    from nanotransformer.encoder_decoder import Seq2Seq, Seq2SeqConfig
    from nanotransformer.model import GPT, GPTConfig
    from nanotransformer.resources import count_params

    for cls, cfg in [
        (GPT, GPTConfig(vocab_size=11, block_size=8, n_layer=3, n_head=2, d_model=8)),
        (GPT, GPTConfig.preset("llama", vocab_size=11, block_size=8, n_layer=5, n_head=4, d_model=16)),
        (BERT, BERTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, d_model=8)),
        (Seq2Seq, Seq2SeqConfig(vocab_size=11, max_len=8, n_enc_layer=2, n_dec_layer=3, n_head=2, d_model=8)),
    ]:
        assert count_params(cls, cfg) == cls(cfg).num_params(), cls.__name__


def test_python_api_refuses_a_model_that_cannot_fit():
    from nanotransformer.model import GPT, GPTConfig

    with pytest.raises(ValueError, match=r"^config: a model of [\d,]+ parameters needs about .* more than this"):
        GPT(GPTConfig(vocab_size=65, block_size=64, n_layer=10**8, n_head=4, d_model=128))


# ----------------------------------------------------------------------------- 7. messages


@pytest.mark.parametrize("argv", [
    ["train", "--grad-clip", "nan"],
    ["train", "no-such-file.txt"],
    ["train", "--resume", "--out", "nowhere"],
    ["generate", "--checkpoint", "nowhere"],
    ["train", "--n-layer", "100000000"],
    ["finetune"],
])
def test_the_installed_command_never_prints_a_traceback(tmp_path, argv):
    env = {**os.environ, "NANOTRANSFORMER_BACKEND": "numpy"}
    out = subprocess.run([sys.executable, "-m", "nanotransformer.cli", *argv], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=120)
    assert out.returncode in (1, 2) and one_error(out.stderr), out.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_loss_too_large_for_exp_is_an_infinite_perplexity_not_a_crash():
    from nanotransformer.metrics import perplexity

    assert perplexity(800.0) == float("inf")  # before: OverflowError "math range error" from `eval`
    assert perplexity(np.array([1000.0, 800.0])) == float("inf")
    assert perplexity(700.0) == pytest.approx(np.exp(700.0))


def test_a_tokenizer_file_with_an_absurd_rank_is_refused_at_load(tmp_path):
    from nanotransformer.tokenizer import BPETokenizer, load_tokenizer

    BPETokenizer().train("hello world " * 50, 260).save(tmp_path / "tok")
    lines = (tmp_path / "tok").read_text().splitlines()
    for i, line in [(len(lines) - 1, lines[-1].split()[0] + " 100000000000"),  # before: a 10^11-id vocabulary
                    (2, 'special_tokens: {"<|x|>": 100000000000}')]:
        bad = list(lines)
        bad[i] = line
        (tmp_path / "bad").write_text("\n".join(bad) + "\n")
        with pytest.raises(ValueError, match=r"bad: .*expected ids below 4,61\d for 26\d tokens, got 100,000,000,000"):
            load_tokenizer(tmp_path / "bad")


def test_decoders_refuse_float_and_bool_ids():
    from nanotransformer.tasks import Vocab
    from nanotransformer.tokenizer import BPETokenizer, CharTokenizer

    for tok in (CharTokenizer.from_text("hello world"), BPETokenizer().train("hello world " * 50, 260),
                Vocab(list("helo"))):
        for ids in ([65.0], [1.0], np.array([1.5]), [True]):  # before: decode([65.0]) == "A"
            with pytest.raises(ValueError, match="^ids: expected integer token ids"):
                tok.decode(ids)
        with pytest.raises(ValueError, match="^ids: expected ids"):
            tok.decode([-1])  # before (Vocab): the last token
        assert tok.decode(np.array([1, 2])) == tok.decode([1, 2])


def test_an_unwritable_out_is_refused_before_training_naming_the_directory(corpus, tmp_path, capsys, monkeypatch):
    # before: a read-only directory was reported as a failure to write loss.png, after training
    ro = tmp_path / "ro"
    ro.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **k: False if str(p).startswith(str(ro)) else real(p, mode, **k))
    for out in (ro, ro / "new" / "run"):
        code, _, err = run(["train", str(corpus), *TINY, "--out", str(out)], capsys)
        assert code == 1 and one_error(err) and f"--out: cannot write to {ro}" in err, err
    assert list(ro.iterdir()) == []


# ----------------------------------------------------------------------------- found in review


def test_two_real_runs_on_one_out_the_second_fails_at_once(corpus, tmp_path, capsys):
    import time

    out = tmp_path / "shared"
    env = {**os.environ, "NANOTRANSFORMER_BACKEND": "numpy"}
    first = subprocess.Popen([sys.executable, "-m", "nanotransformer.cli", "train", str(corpus), *TINY,
                              "--max-steps", "100000", "--out", str(out)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        t0 = time.time()
        while not (out / ck.LOCK).exists() and time.time() - t0 < 60:  # it locks --out before any work
            time.sleep(0.1)
        time.sleep(0.5)
        code, _, err = run(["train", str(corpus), *TINY, "--max-steps", "2", "--out", str(out), "--overwrite"], capsys)
        assert code == 1 and one_error(err) and f"{out}: another run is writing to this directory (pid {first.pid})" in err
    finally:
        first.kill()
        first.wait()


def test_the_fresh_run_check_is_made_under_the_lock(run_dir, corpus, tmp_path, capsys):
    # before: checked, then locked later, so a run that finished in between was replaced
    fresh = tmp_path / "fresh"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(fresh)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, _, err = run(["train", str(corpus), *TINY, "--max-steps", "2", "--out", str(fresh)], capsys)
        assert code == 1 and one_error(err) and "another run is writing to this directory" in err
    finally:
        holder.kill()
        holder.wait()


def test_save_checkpoint_itself_honours_the_lock(run_dir):
    ckpt = ck.load_checkpoint(run_dir)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(run_dir)
        with pytest.raises(ValueError, match="another run is writing to this directory"):
            ck.save_checkpoint(run_dir, ckpt.model, step=99)
        assert snapshot(run_dir) == before
    finally:
        holder.kill()
        holder.wait()


def test_a_run_inside_its_data_directory_resumes(tmp_path, capsys):
    d = tmp_path / "docs"
    d.mkdir()
    (d / "a.txt").write_text(TEXT, encoding="utf-8")
    out = d / "run"  # its checkpoint files are not data (before: every file was hashed)
    assert main(["train", str(d), *TINY, "--max-steps", "4", "--stop-after", "2", "--out", str(out)]) == 0
    (d / "notes.pdf").write_bytes(b"%PDF not text")
    code, out_text, err = run(["train", "--resume", "--out", str(out), "--no-progress", "--sample-tokens", "0"], capsys)
    assert code == 0 and "resuming" in out_text, err


def test_the_estimate_covers_evaluation_and_micro_batches():
    from nanotransformer.model import GPTConfig
    from nanotransformer.resources import training_bytes

    cfg = GPTConfig(vocab_size=8192, block_size=512, n_layer=4, n_head=4, d_model=256)
    small_eval = training_bytes(cfg, 10**6, 10**6, rows=8, eval_rows=8, itemsize=4)["activations"]
    big_eval = training_bytes(cfg, 10**6, 10**6, rows=8, eval_rows=32, itemsize=4)["activations"]
    assert big_eval > small_eval  # grad-accum 4: a step holds 8 rows, an evaluation all 32
    lora = training_bytes(cfg, 10**6, 10**4, rows=8, eval_rows=8, itemsize=4)["parameters"]
    full = training_bytes(cfg, 10**6, 10**6, rows=8, eval_rows=8, itemsize=4)["parameters"]
    assert lora < full / 4  # a frozen base has no gradients or moments
    clf = training_bytes(cfg, 10**6, 10**6, rows=8, eval_rows=8, itemsize=4, classes=2)["activations"]
    assert clf < small_eval  # a classifier's head has 2 outputs per sequence, not V per token


@pytest.mark.parametrize("argv, match", [
    (["--block-size", "100000000"], "block_size 100000000 needs at least"),  # before: built a 1.6e9-parameter model
    (["--resume", "--overwrite"], "--overwrite: not with --resume"),
])
def test_more_refusals_before_any_work(corpus, tmp_path, capsys, argv, match):
    code, _, err = run(["train", str(corpus), "--no-progress", *argv, "--out", str(tmp_path / "r")], capsys)
    assert code == 1 and one_error(err) and match in err, err
    assert not (tmp_path / "r").exists()


def test_generating_more_than_memory_holds_is_one_error(run_dir, capsys):
    code, _, err = run(["generate", "--checkpoint", str(run_dir), "--num-samples", "1000000000",
                        "--max-new-tokens", "5"], capsys)  # fmt: skip
    assert code == 1 and one_error(err) and "out of memory" in err, err  # before: _ArrayMemoryError traceback


def test_resume_refuses_another_seed(run_dir, capsys):
    code, _, err = run(["train", "--resume", "--out", str(run_dir), "--seed", "7", "--no-progress"], capsys)
    assert code == 1 and one_error(err) and "--seed: cannot change when resuming" in err, err


def test_an_unknown_flag_points_at_its_commands_help(capsys):
    code, _, err = run(["generate", "--checkpoint", "x", "--no-progress"], capsys)
    assert code == 2 and one_error(err) and "`nanotransformer generate --help`" in err


def test_an_interrupted_run_keeps_a_loss_curve_that_matches_its_checkpoint(corpus, tmp_path, capsys, monkeypatch):
    from nanotransformer import train as train_mod

    step = train_mod.Trainer.train_step

    def interrupted(self):
        if self.step == 5:
            raise KeyboardInterrupt
        return step(self)

    monkeypatch.setattr(train_mod.Trainer, "train_step", interrupted)
    out = tmp_path / "r"
    code, _, err = run(["train", str(corpus), *TINY, "--max-steps", "10", "--out", str(out)], capsys)
    assert code == 130 and "interrupted" in err
    assert ck.load_checkpoint(out).step == 4 and (out / "loss.png").stat().st_size > 1000
