"""Gradient accumulation and data parallelism (distributed.py, train.Trainer._accumulate, ZeRO-1).

In-process: grad_accum K equals a K times larger batch (float64 to 1e-12), the batch must divide,
the agreement check names what differs, nothing imports mpi4py without a launcher. Under MPI
(skipped without mpi4py and mpirun, which the `[mpi]` extra brings): 2 ranks give bit for bit
what one process gives with grad_accum 2, ZeRO-1 gives bit for bit the unsharded run, and a
checkpoint of 2 ranks resumes on 1. Every MPI run is tests/dp_worker.py, one thread per rank.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nanotransformer import distributed
from nanotransformer.checkpoint import has_checkpoint
from nanotransformer.optim import AdamW
from nanotransformer.train import Trainer, TrainConfig

sys.path.insert(0, str(Path(__file__).parent))
from dp_worker import task_and_model  # noqa: E402  (the tiny runs the MPI jobs train too)

WORKER = Path(__file__).parent / "dp_worker.py"
ONE_THREAD = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")}


def run_fit(kind, dtype=np.float64, steps=6, **train_kw):
    data, model = task_and_model(kind, 0.0, 0, dtype)
    cfg = TrainConfig(**{**dict(batch_size=8, max_steps=steps, lr=3e-3, warmup=2, eval_interval=3, eval_iters=2,
                                seed=0), **train_kw})
    tr = Trainer(model, data, cfg, progress=False)
    tr.fit(log=False)
    return np.array(tr.history["loss"]), model.params.copy()


# ----------------------------------------------------------------------------- one process


@pytest.mark.parametrize("kind", ["gpt", "bert"])
@pytest.mark.parametrize("K", [2, 4])
def test_grad_accum_equals_a_k_times_larger_batch(kind, K):
    """Same data, same steps: only the order of the float64 additions differs. BERT masks a
    different number of tokens in each micro-batch, so this holds only because each micro-batch's
    gradient is weighted by its number of loss terms (an unweighted mean is off by ~1e-3 here)."""
    loss1, p1 = run_fit(kind)
    lossk, pk = run_fit(kind, grad_accum=K)
    np.testing.assert_allclose(lossk, loss1, rtol=1e-12, atol=0)
    np.testing.assert_allclose(pk, p1, rtol=0, atol=1e-12)


def test_grad_accum_in_float32():
    loss1, p1 = run_fit("gpt", np.float32)
    loss2, p2 = run_fit("gpt", np.float32, grad_accum=2)
    np.testing.assert_allclose(loss2, loss1, rtol=1e-6, atol=0)  # float32 reduction order, 6 steps
    np.testing.assert_allclose(p2, p1, rtol=0, atol=1e-5)


class FakeWorld(distributed.World):
    """A job of `size` ranks seen from rank 0, whose allgather answers with `others` (no MPI)."""

    def __init__(self, size, others=()):
        super().__init__()
        self.size, self.others = size, list(others)

    def allgather(self, obj):
        if isinstance(obj, tuple):  # World.exchange sends (what, obj): the others answer from the same point
            what, mine = obj
            return [obj] + [(what, o) for o in (self.others or [mine] * (self.size - 1))]
        return [obj] + (self.others or [obj] * (self.size - 1))


def test_the_batch_must_split_evenly():
    with pytest.raises(ValueError, match=r"batch_size: expected a multiple of 3 \(grad_accum=3: the global batch"):
        TrainConfig(batch_size=8, grad_accum=3)
    data, model = task_and_model("gpt", 0.0, 0)
    with pytest.raises(ValueError, match=r"batch_size: expected a multiple of 6 \(3 ranks x grad_accum 2"):
        Trainer(model, data, TrainConfig(batch_size=8, grad_accum=2), world=FakeWorld(3))
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="grad_accum: expected a positive integer"):
            TrainConfig(grad_accum=bad)
    with pytest.raises(ValueError, match="shard_optimizer: expected True or False"):
        TrainConfig(shard_optimizer="yes")


def test_ranks_that_disagree_are_named():
    data, model = task_and_model("gpt", 0.0, 0)
    tr = Trainer(model, data, TrainConfig(batch_size=8), world=FakeWorld(2), progress=False)
    ok = {"the training config": "a", "the parameters": "b", "the step, optimiser step and RNG state": "c",
          "the data": "d"}
    tr.world.others = [{**ok, "the data": "x"}]
    with pytest.raises(distributed.RanksDisagree) as e:
        distributed.check_agreement(tr.world, ok)
    assert str(e.value) == ("the 2 ranks disagree on the data (rank 1 differs from rank 0); start every rank with "
                            "the same flags, data and checkpoint")
    tr.world.others = [{**ok, "the data": "x"}]  # the Trainer's own check, before its first evaluation
    with pytest.raises(distributed.RanksDisagree, match="disagree on the training config .* the data"):
        tr.evaluate()


def test_sharded_adamw_slices_are_the_whole_update():
    """ZeRO-1's arithmetic: two half-optimisers update the two halves exactly as one does."""
    _, a = task_and_model("gpt", 0.0, 0)
    _, b = task_and_model("gpt", 0.0, 0)
    rng = np.random.default_rng(0)
    n = len(a.params) - a.frozen
    full, halves = AdamW(a, 1e-2, weight_decay=0.1), [AdamW(b, 1e-2, weight_decay=0.1, shard=s)
                                                        for s in ((0, n // 2), (n // 2, n))]
    for _ in range(3):
        a.grads[...] = b.grads[...] = rng.standard_normal(len(a.grads)).astype(a.dtype)
        full.step()
        for h in halves:
            h.step()
    np.testing.assert_array_equal(b.params, a.params)
    assert sum(h.state_bytes() for h in halves) == full.state_bytes()
    back = halves[0].unsharded(np.concatenate([h.m[0] for h in halves]), np.concatenate([h.v[0] for h in halves]))
    np.testing.assert_array_equal(back.m[0], full.m[0])
    with pytest.raises(ValueError, match="shard: expected"):
        AdamW(a, shard=(0, n + 1))


def test_a_sharded_adamw_loads_its_slice_after_a_frozen_prefix(rng):
    from nanotransformer.finetuning import GPTClassifier

    clf = GPTClassifier(task_and_model("gpt", 0.0, 0)[1], n_classes=2, train_blocks=1, seed=0)
    assert clf.frozen > 0
    state = {"t": 3, "m": rng.standard_normal(len(clf.params)), "v": rng.random(len(clf.params))}
    n = len(clf.params) - clf.frozen
    opt = AdamW(clf, shard=(n // 3, n // 2))
    opt.load(state)
    np.testing.assert_array_equal(opt.m[0], state["m"][clf.frozen + n // 3 : clf.frozen + n // 2].astype(clf.dtype))
    np.testing.assert_array_equal(opt.v[0], state["v"][clf.frozen + n // 3 : clf.frozen + n // 2].astype(clf.dtype))


def test_nothing_imports_mpi4py_without_a_launcher():
    code = ("import sys; import nanotransformer.cli, nanotransformer.train, nanotransformer.distributed as d; "
            "assert d.world().size == 1; assert 'mpi4py' not in sys.modules, 'mpi4py imported'; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=JOB_ENV, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_a_launcher_without_mpi4py_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setattr(distributed, "_WORLD", None)
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # as if not installed
    with pytest.raises(ValueError, match=r"started by an MPI launcher with 2 ranks, but mpi4py is not installed"):
        distributed.world()


def test_the_fingerprint_covers_the_data_files_and_the_runs_end(monkeypatch):
    """Two files that happen to give the same first batches still differ in data_meta's sha256,
    and a run to another last step (--max-steps, --stop-after) is refused before its first step."""
    def fingerprints(meta, stop_after=None):
        data, model = task_and_model("gpt", 0.0, 0)
        tr = Trainer(model, data, TrainConfig(batch_size=8, max_steps=4, eval_interval=2), world=FakeWorld(2),
                     progress=False, data_meta=meta)
        got = []
        monkeypatch.setattr(distributed, "check_agreement", lambda world, fp: got.append(fp))
        monkeypatch.setattr(tr, "_fit_locked", lambda *a: tr._agree())
        tr.fit(log=False, stop_after=stop_after)
        return got[0]

    a = fingerprints({"data_sha256": "aa"})
    b = fingerprints({"data_sha256": "bb"})
    assert [k for k in a if a[k] != b[k]] == ["the data"]
    c = fingerprints({"data_sha256": "aa"}, stop_after=2)
    assert [k for k in a if a[k] != c[k]] == ["the run's last step (--max-steps, --stop-after)"]


def test_a_split_that_does_not_divide_over_ranks_suggests_grad_accum():
    from nanotransformer.train import check_split

    with pytest.raises(ValueError, match=r"got 8; --grad-accum K sets the micro-batches per rank \(a resumed run "
                                         r"keeps its checkpoint's\): 16 x K must divide the batch$"):
        check_split(8, 1, 16)
    with pytest.raises(ValueError, match=r"got 8$"):  # one process: grad_accum is what was given
        check_split(8, 3)


class RankOf(FakeWorld):
    """Rank `rank` of a FakeWorld job (no MPI): its exchanges are recorded, with what was on disk then."""

    def __init__(self, size, rank, probe=None):
        super().__init__(size)
        self.rank, self.exchanged, self.probe = rank, [], probe

    def exchange(self, what, obj):
        self.exchanged.append((what, self.probe() if self.probe else None))
        return [obj] * self.size


def test_only_rank_0_writes_the_lora_base_and_the_others_wait_for_it(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from nanotransformer import checkpoint, cli_chat
    from nanotransformer.finetuning import GPTClassifier

    tok_data, gpt = task_and_model("gpt", 0.0, 0)
    clf = GPTClassifier(gpt, n_classes=2, seed=0)
    src = tmp_path / "src"
    checkpoint.save_checkpoint(src, gpt)
    args = SimpleNamespace(lora_rank=2, lora_alpha=None, lora_targets=None)
    writes = []
    real_save = checkpoint.save_checkpoint
    monkeypatch.setattr(checkpoint, "save_checkpoint", lambda d, *a, **k: (writes.append(d), real_save(d, *a, **k)))
    out = tmp_path / "out"
    out.mkdir()
    base = lambda: sorted(p.name for p in out.iterdir())  # noqa: E731
    one = RankOf(2, 1, probe=base)
    monkeypatch.setattr(distributed, "_WORLD", one)
    with pytest.raises(ValueError):  # rank 1 alone: nobody wrote the base it waited for
        cli_chat.maybe_lora(args, clf, None, src, True, out, lambda *a: None, why="test")
    assert writes == [] and one.exchanged == [("the LoRA base", [])]
    zero = RankOf(2, 0, probe=base)
    monkeypatch.setattr(distributed, "_WORLD", zero)
    lora = cli_chat.maybe_lora(args, clf, None, src, True, out, lambda *a: None, why="test")
    assert len(writes) == 1 and zero.exchanged == [("the LoRA base", [writes[0].name])]  # written, then told
    monkeypatch.setattr(distributed, "_WORLD", one)  # now rank 1 finds it
    assert cli_chat.maybe_lora(args, clf, None, src, True, out, lambda *a: None, why="test").rank == lora.rank
    assert len(writes) == 1


def test_other_ranks_return_after_fit_without_the_report(monkeypatch):
    """Sampling, BLEU and skills evaluation run on rank 0 alone: an error there on another rank
    must not end rank 0's run."""
    from types import SimpleNamespace

    from nanotransformer import cli

    fitted = []
    trainer = SimpleNamespace(world=RankOf(2, 1), parallel_summary=lambda: [], fit=lambda **k: fitted.append(k),
                              history={"eval": [{"val": 1.0}]}, step=2, config=SimpleNamespace(max_steps=2),
                              task=None, model=None, tokenizer=None)
    monkeypatch.setattr(cli.per_kind, "report", lambda *a: (_ for _ in ()).throw(ValueError("report ran")))
    args = SimpleNamespace(no_progress=True, stop_after=None, data=None)
    assert cli.fit_and_report(trainer, SimpleNamespace(kind="gpt"), args, Path("o"), print, 0) is False
    assert len(fitted) == 1
    trainer.world = RankOf(2, 0)
    with pytest.raises(ValueError, match="report ran"):
        cli.fit_and_report(trainer, SimpleNamespace(kind="gpt"), args, Path("o"), lambda *a: None, 0)


def test_warnings_are_printed_by_rank_0_alone(monkeypatch, capsys):
    from nanotransformer import cli

    monkeypatch.setattr(distributed, "_WORLD", RankOf(2, 1))
    cli._show_warning("twice", UserWarning, "f", 1)
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(distributed, "_WORLD", RankOf(2, 0))
    cli._show_warning("once", UserWarning, "f", 1)
    assert capsys.readouterr().err == "warning: once\n"


# ----------------------------------------------------------------------------- under MPI


MPIRUN = shutil.which("mpirun", path=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
JOB_ENV = {**{k: v for k, v in os.environ.items() if k not in distributed.LAUNCHER_SIZE}, **ONE_THREAD}


def _mpi_missing():
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed (pip install -e '.[mpi]')"
    if MPIRUN is None:
        return "mpirun is not on PATH (the [mpi] extra's mpich wheel brings one)"
    return None


# CI sets NANOTRANSFORMER_REQUIRE_MPI=1 (.ci/run): there a missing MPI fails these tests instead of skipping them
REQUIRE_MPI = os.environ.get("NANOTRANSFORMER_REQUIRE_MPI") == "1"
needs_mpi = pytest.mark.skipif(_mpi_missing() is not None and not REQUIRE_MPI, reason=str(_mpi_missing()))


@pytest.fixture(autouse=True)
def _mpi_required(request):
    marker = request.node.get_closest_marker("skipif")  # needs_mpi's (no other test here skips)
    if REQUIRE_MPI and marker is not None and marker.kwargs.get("reason") == needs_mpi.kwargs["reason"] \
            and _mpi_missing() is not None:  # fmt: skip
        pytest.fail(f"NANOTRANSFORMER_REQUIRE_MPI=1 but {_mpi_missing()}")


def job(tmp_path, name, *args, ranks=1, timeout=120, check=True):
    """Run dp_worker.py (under `mpirun -n ranks` when ranks > 1) -> its .npz output."""
    out = tmp_path / f"{name}.npz"
    cmd = [sys.executable, str(WORKER), str(out), *map(str, args)]
    if ranks > 1:
        cmd = [MPIRUN, "-n", str(ranks)] + cmd
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=JOB_ENV)
    if check:
        assert r.returncode == 0, r.stderr[-3000:]
        return dict(np.load(out))
    return r


@needs_mpi
@pytest.mark.parametrize("kind, dropout", [("gpt", 0.0), ("gpt", 0.2), ("bert", 0.0)])
def test_two_ranks_equal_one_process_bit_for_bit(tmp_path, kind, dropout):
    """Rank r holds micro-batch r; one process with grad_accum 2 runs both in turn. Same batches,
    same dropout masks (seeded by micro-batch), same additions: identical losses, evaluations and
    parameters."""
    one = job(tmp_path, "one", "--kind", kind, "--dropout", dropout, "--grad-accum", 2)
    two = job(tmp_path, "two", "--kind", kind, "--dropout", dropout, ranks=2)
    for key in ("loss", "eval", "params"):
        np.testing.assert_array_equal(two[key], one[key], err_msg=key)


@needs_mpi
def test_two_ranks_are_one_batch_of_the_global_size(tmp_path):
    """Without dropout, 2 ranks x 4 rows = one process x 8 rows, to float32 reduction order."""
    plain = job(tmp_path, "plain")
    two = job(tmp_path, "two", ranks=2)
    np.testing.assert_allclose(two["loss"], plain["loss"], rtol=1e-6, atol=0)
    np.testing.assert_allclose(two["params"], plain["params"], rtol=0, atol=1e-5)


@needs_mpi
def test_without_the_all_reduce_the_ranks_train_on_half_the_batch(tmp_path):
    """The negative control of the two tests above: skip the Allreduce and the run differs."""
    one = job(tmp_path, "one", "--grad-accum", 2)
    broken = job(tmp_path, "broken", "--no-reduce", ranks=2)
    assert np.abs(broken["loss"][1:] - one["loss"][1:]).max() > 1e-3


@needs_mpi
def test_zero1_equals_the_unsharded_run_and_resumes_on_another_number_of_ranks(tmp_path):
    """2 ranks with sharded moments: bit for bit the unsharded run, half the moments per rank.
    Stopped after 3 steps (rank 0 gathers the moments into the checkpoint), then resumed by one
    process with grad_accum 2: bit for bit the uninterrupted 2-rank run."""
    whole = job(tmp_path, "whole", ranks=2)
    sharded = job(tmp_path, "sharded", "--shard", ranks=2)
    np.testing.assert_array_equal(sharded["loss"], whole["loss"])
    np.testing.assert_array_equal(sharded["params"], whole["params"])
    one = job(tmp_path, "one", "--grad-accum", 2)
    assert 2 * sharded["moments"][0] == one["moments"][0]
    ckpt = tmp_path / "ckpt"
    job(tmp_path, "first", "--shard", "--ckpt", ckpt, "--stop-after", 3, ranks=2)
    written = sorted(p.suffix for p in ckpt.iterdir() if not p.name.startswith("."))  # (not the .lock)
    assert written == [".json", ".png", ".safetensors"]  # one writer
    resumed = job(tmp_path, "resumed", "--grad-accum", 2, "--ckpt", ckpt, "--resume")
    np.testing.assert_array_equal(resumed["loss"], whole["loss"])
    np.testing.assert_array_equal(resumed["params"], whole["params"])


@needs_mpi
def test_cli_two_ranks_print_once_and_bad_input_is_one_error(tmp_path):
    flags = ["train", "--max-steps", "2", "--eval-interval", "2", "--eval-iters", "2", "--n-layer", "1",
             "--d-model", "16", "--block-size", "16", "--backend", "numpy", "--no-progress", "--sample-tokens", "0"]
    cli = [sys.executable, "-m", "nanotransformer.cli"]

    def run(*argv):
        return subprocess.run([MPIRUN, *argv], capture_output=True, text=True, timeout=120, env=JOB_ENV)

    r = run("-n", "2", *cli, *flags, "--shard-optimizer", "--out", str(tmp_path / "ok"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("final: step 2") == 1 and "ZeRO-1: AdamW moments" in r.stdout
    r = run("-n", "2", *cli, *flags, "--batch-size", "5", "--out", str(tmp_path / "odd"))
    assert r.returncode != 0 and r.stderr.strip().splitlines() == [
        "error: --batch-size: expected a multiple of 2 (2 ranks x grad_accum 1: the global batch is cut into that "
        "many equal micro-batches), got 5; --grad-accum K sets the micro-batches per rank (a resumed run keeps its "
        "checkpoint's): 2 x K must divide the batch"]
    r = run("-n", "1", *cli, *flags, "--seed", "1", "--out", str(tmp_path / "seeds"), ":",
            "-n", "1", *cli, *flags, "--seed", "2", "--out", str(tmp_path / "seeds"))
    assert r.returncode != 0 and r.stderr.strip().splitlines() == [
        "error: the 2 ranks disagree on the training config (rank 1 differs from rank 0); the parameters (rank 1 "
        "differs from rank 0); the step, optimiser step and RNG state (rank 1 differs from rank 0); the data (rank 1 "
        "differs from rank 0); start every rank with the same flags, data and checkpoint"]
    assert not has_checkpoint(tmp_path / "seeds")


@needs_mpi
def test_a_rank_that_fails_ends_the_job_instead_of_hanging(tmp_path):
    """Rank 1 raises in the middle of training while rank 0 waits in the Allreduce: the job ends
    (MPI_Abort) with rank 1's error, well inside the timeout."""
    r = job(tmp_path, "dies", "--fail-rank", 1, "--fail-step", 2, ranks=2, timeout=60, check=False)
    assert r.returncode != 0
    assert "error: rank 1: step 2: rank 1 failed on purpose" in r.stderr


@needs_mpi
def test_a_rank_that_is_killed_ends_the_job(tmp_path):
    """SIGKILL leaves no Python to call MPI_Abort: MPICH's launcher notices and ends the others."""
    r = job(tmp_path, "killed", "--fail-rank", 1, "--fail-step", 2, "--kill", ranks=2, timeout=60, check=False)
    assert r.returncode != 0
    assert "Killed (signal 9)" in r.stdout + r.stderr


CLI = [sys.executable, "-m", "nanotransformer.cli"]
TINY = ["train", "--block-size", "16", "--n-layer", "1", "--n-head", "2", "--d-model", "16", "--max-steps", "4",
        "--eval-interval", "2", "--eval-iters", "1", "--backend", "numpy", "--no-progress", "--sample-tokens", "0"]


def mpirun(*argv, timeout=90):
    return subprocess.run([MPIRUN, *argv], capture_output=True, text=True, timeout=timeout, env=JOB_ENV)


def mpmd(rank0, rank1, out):
    """`nanotransformer train` as a job of two ranks started with different flags (MPMD)."""
    return mpirun("-n", "1", *CLI, *TINY, *rank0, "--out", str(out), ":", "-n", "1", *CLI, *TINY, *rank1,
                  "--out", str(out))


@needs_mpi
def test_an_out_dir_refused_on_rank_0_ends_every_rank_with_one_error(tmp_path):
    """Rank 0 alone checks --out (and holds its lock); its refusal is sent to the others, so the
    job ends at once instead of rank 1 waiting in the first collective for ever."""
    out = tmp_path / "run"
    r = mpirun("-n", "2", *CLI, *TINY, "--batch-size", "8", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    r = mpirun("-n", "2", *CLI, *TINY, "--batch-size", "8", "--out", str(out))
    assert r.returncode != 0 and r.stderr.strip().splitlines() == [
        f"error: --out: {out} already holds a checkpoint; use --resume to continue it, --overwrite to replace it "
        "(at the new run's first evaluation), or another --out"]
    (tmp_path / "file").write_text("x")
    r = mpirun("-n", "2", *CLI, *TINY, "--batch-size", "8", "--out", str(tmp_path / "file"))
    assert r.returncode != 0 and r.stderr.strip().splitlines() == [
        f"error: --out: {tmp_path / 'file'} is an existing file; expected a directory (new, or holding a checkpoint)"]


@needs_mpi
def test_rank_1_failing_alone_before_training_is_reported_by_rank_0(tmp_path):
    """Rank 1 alone refuses its flags while rank 0 waits in its agreement check: rank 1 sends its
    error there, rank 0 prints it, both exit 1. The other way round rank 0 prints its own."""
    said = ("--batch-size: expected a multiple of 2 (2 ranks x grad_accum 1: the global batch is cut into that "
            "many equal micro-batches), got 5; --grad-accum K sets the micro-batches per rank (a resumed run keeps "
            "its checkpoint's): 2 x K must divide the batch")
    r = mpmd(["--batch-size", "8"], ["--batch-size", "5"], tmp_path / "m1")
    assert r.returncode != 0 and r.stderr.strip().splitlines() == [f"error: rank 1: {said}"]
    r = mpmd(["--batch-size", "5"], ["--batch-size", "8"], tmp_path / "m1")
    assert r.returncode != 0 and r.stderr.strip().splitlines() == [f"error: {said}"]
    assert not has_checkpoint(tmp_path / "m1")


@needs_mpi
def test_ranks_stopping_at_different_steps_are_refused(tmp_path):
    r = mpmd(["--batch-size", "8", "--stop-after", "2"], ["--batch-size", "8"], tmp_path / "stop")
    assert r.returncode != 0 and r.stderr.strip().splitlines() == [
        "error: the 2 ranks disagree on the run's last step (--max-steps, --stop-after) (rank 1 differs from rank 0); "
        "start every rank with the same flags, data and checkpoint"]


@needs_mpi
def test_ranks_given_different_files_are_refused(tmp_path):
    """Files differing in their last character: refused before the first step (the files' sha256 is
    fingerprinted with the first batches; the in-process test above shows the hash alone is enough)."""
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("the quick brown fox jumps over the lazy dog.\n" * 200)
    b.write_text("the quick brown fox jumps over the lazy dog.\n" * 200 + "a")
    r = mpmd([str(a), "--batch-size", "8"], [str(b), "--batch-size", "8"], tmp_path / "files")
    assert r.returncode != 0 and r.stderr.strip().splitlines() == [
        "error: the 2 ranks disagree on the data (rank 1 differs from rank 0); start every rank with the same flags, "
        "data and checkpoint"]


@needs_mpi
def test_a_rank_failing_where_the_others_never_wait_is_still_reported(tmp_path):
    """`eval` has no collective of its own: rank 0 finishes while rank 1 has failed. The command's
    last exchange is where rank 1's error meets it, instead of rank 1 waiting for ever."""
    ckpt, text = tmp_path / "ckpt", tmp_path / "val.txt"
    text.write_text("the quick brown fox jumps over the lazy dog.\n" * 20)
    r = subprocess.run([*CLI, *TINY, "--batch-size", "8", "--out", str(ckpt)], capture_output=True, text=True,
                       timeout=120, env=JOB_ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    evaluate = [*CLI, "eval", "--checkpoint", str(ckpt)]
    r = mpirun("-n", "1", *evaluate, str(text), ":", "-n", "1", *evaluate, str(tmp_path / "missing.txt"))
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("error: rank 1: ") and "missing.txt" in r.stderr
