"""Data parallelism over MPI: the ranks of one `mpirun -n N` job, seen by the one `train.Trainer`.

    mpirun -n 2 nanotransformer train --batch-size 16 --out runs/dp     # 8 rows per rank per step

Each rank holds the whole model. Every step each rank draws the same global batch (the same RNG,
so every rank's generator stays in step), keeps its own rows, runs forward and backward, and the
gradients are summed over the ranks in one `Allreduce` of the flat gradient buffer (llm.c's
`MPI_Allreduce` of `grads_memory`); every rank then applies the same AdamW update, so the
parameters never drift apart. With `shard_optimizer` (ZeRO stage 1, Rajbhandari et al. 2020)
each rank keeps the AdamW moments of its slice of the buffer only, updates that slice, and the
slices are all-gathered into every rank's parameters.

`world()` is the job this process belongs to: a one-rank `World` (no MPI at all) unless the
process was started by an MPI launcher, which says so in the environment (MPICH's Hydra sets
PMI_SIZE, Open MPI sets OMPI_COMM_WORLD_SIZE). Only then is mpi4py imported, so without the
`[mpi]` extra nothing here needs it. `ring_allreduce` is the ring algorithm on NumPy arrays in
one process (chapter 20 by hand; it never talks to MPI).

Errors: until the first step or evaluation the ranks talk only through `World.exchange` (rank 0's
check of --out, the LoRA base, `check_agreement`, and the end of a command that did not train).
A rank that fails there joins the exchange the others wait in with its error instead
(`finish_error`), and every other rank raises the same `RankFailed` ("rank 1: ..."): one line,
printed by rank 0, and every rank exits 1. A rank that raises after the ranks started training
calls `MPI_Abort`, so the others stop instead of waiting forever in a collective (a rank killed
outright is MPI's own business: the launcher ends the job). Ranks that disagree about their flags or data are found by `check_agreement`
(one hash per ingredient, exchanged) and every rank raises the same `RanksDisagree`.

Dimension legend: N number of ranks, P trainable parameters (the flat buffer's trainable part).

Does not: overlap the all-reduce with the backward pass (one call after it; chapter 20 says why),
use GPUs or NCCL, or survive the loss of a rank (no elastic restart: resume from the checkpoint).
"""
import contextlib
import hashlib
import os
import sys

import numpy as np

# environment variables an MPI launcher sets to the number of ranks (MPICH/Hydra, Open MPI, PMIx)
LAUNCHER_SIZE = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE")


class JobError(ValueError):
    """An error every rank of the job raises together (rank 0 alone prints it)."""


class RanksDisagree(JobError):
    """The ranks of one job were started with different flags, data or states (raised on every rank)."""


class RankFailed(JobError):
    """Another rank failed before the ranks started training (raised on every rank that did not)."""


class _Failed:
    """What a rank that failed sends to the exchange the others wait in (`finish_error`)."""

    def __init__(self, text):
        self.text = text


def launched_size():
    """The number of ranks the MPI launcher started (1 when not started by one)."""
    for name in LAUNCHER_SIZE:
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 1:
            return int(value)
    return 1


class World:
    """The ranks of this job: `rank`, `size` and the few collectives the trainer uses. With
    comm=None a job of one rank whose collectives return their input (no MPI involved)."""

    def __init__(self, comm=None):
        self.comm = comm
        self.rank = 0 if comm is None else comm.Get_rank()
        self.size = 1 if comm is None else comm.Get_size()
        self.talked = False  # set by the first collective: from then on an error must abort the job

    @property
    def is_root(self):
        return self.rank == 0

    def _mpi(self):
        from mpi4py import MPI

        self.talked = True
        return MPI

    def allreduce_sum(self, buf):
        """Sum the contiguous array buf over the ranks, in place (every rank gets the sum)."""
        if self.size > 1:
            self.comm.Allreduce(self._mpi().IN_PLACE, buf, op=self._mpi().SUM)
        return buf

    def allgather(self, obj):
        """[obj of rank 0, obj of rank 1, ...] on every rank (small Python objects)."""
        if self.size == 1:
            return [obj]
        self._mpi()
        return self.comm.allgather(obj)

    def exchange(self, what, obj):
        """[obj of rank 0, obj of rank 1, ...] on every rank, before training (what: the point of
        the program it is sent from). Does not count as talking: a rank that fails until the first
        step or evaluation joins the exchange the others wait in (`finish_error`), and then every
        rank raises RankFailed naming it; ranks at different exchanges raise RanksDisagree."""
        if self.size == 1:
            return [obj]
        talked = self.talked
        every = self.allgather((what, obj))
        self.talked = talked
        failed = [f"rank {r}: {o.text}" for r, (_, o) in enumerate(every) if isinstance(o, _Failed)]
        if failed:
            raise RankFailed("; ".join(failed))
        if len({w for w, _ in every}) > 1:
            raise RanksDisagree(f"the {self.size} ranks disagree on where they are: "
                                + ", ".join(f"rank {r} at {w}" for r, (w, _) in enumerate(every))
                                + "; start every rank with the same flags, data and checkpoint")
        return [o for _, o in every]

    def sum_in_rank_order(self, x):
        """sum(x over the ranks) added rank 0 first, so every rank gets the same float (a scalar)."""
        return sum(self.allgather(x))

    def allgather_slices(self, buf, bounds):
        """buf[bounds[r]:bounds[r+1]] holds rank r's part; afterwards every rank holds every part."""
        if self.size > 1:
            counts = np.diff(bounds)
            self.comm.Allgatherv(self._mpi().IN_PLACE, [buf, counts, np.asarray(bounds[:-1]), None])
        return buf

    def gather_to_root(self, part):
        """The ranks' arrays concatenated in rank order on rank 0 (None elsewhere)."""
        if self.size == 1:
            return part
        self._mpi()
        parts = self.comm.gather(part, root=0)
        return np.concatenate(parts) if self.is_root else None

    def abort(self, code=1):
        """End every rank of the job now (MPI_Abort); a one-rank job just exits."""
        if self.size > 1:
            self.comm.Abort(code)
        sys.exit(code)


_WORLD = None


def world():
    """The job this process is part of (built once): MPI's COMM_WORLD when an MPI launcher
    started more than one rank, else a one-rank World."""
    global _WORLD
    if _WORLD is None:
        n = launched_size()
        if n == 1:
            _WORLD = World()
        else:
            try:
                from mpi4py import MPI
            except ImportError:
                raise ValueError(f"started by an MPI launcher with {n} ranks, but mpi4py is not installed; "
                                 "install the extra: pip install -e \".[mpi]\"") from None
            _WORLD = World(MPI.COMM_WORLD)
            sys.excepthook = _abort_on_uncaught(sys.excepthook)
    return _WORLD


def _abort_on_uncaught(hook):
    """An uncaught exception (a traceback) on one rank would leave the others waiting in a collective
    for ever, as a rank's sys.exit would: print it, then MPI_Abort the job (`python -m mpi4py` does so too)."""

    def excepthook(*exc):
        hook(*exc)
        sys.stderr.flush()
        _WORLD.comm.Abort(1)

    return excepthook


def ring_allreduce(arrays, messages=None):
    """The ring all-reduce of N equal-shape arrays, one per rank, simulated in one process ->
    N arrays, each the sum (chapter 20; MPI's Allreduce does this, or a tree, over the network).

    Each array is cut into N chunks (`shard_bounds`: sizes differ by at most one) and the ranks
    stand in a ring, rank r sending to rank r + 1 (mod N). Reduce-scatter, steps s = 0 .. N-2:
    rank r sends its chunk (r - s) mod N, which the receiver adds to its own; afterwards rank r
    holds the whole sum of chunk (r + 1) mod N. All-gather, steps s = 0 .. N-2: rank r sends its
    complete chunk (r + 1 - s) mod N, which the receiver keeps. Every rank sends 2 (N - 1) chunks,
    2 (N - 1) / N of the array, whatever N: the cost that makes a ring scale.
    messages: a list to append (phase, step, src, dst, chunk, elements) to, one per send."""
    N = len(arrays)
    dtype = np.result_type(*[np.asarray(a) for a in arrays], np.float32)  # floating point, at least float32
    bufs = [np.array(a, dtype=dtype).reshape(-1) for a in arrays]  # copies: the inputs are left as they were
    bounds = shard_bounds(bufs[0].size, N)
    chunk = [slice(bounds[i], bounds[i + 1]) for i in range(N)]
    for phase in ("reduce-scatter", "all-gather"):
        for s in range(N - 1):
            # every rank sends at once: read what is sent before anyone writes
            sends = [((r - s) % N if phase == "reduce-scatter" else (r + 1 - s) % N) for r in range(N)]
            payload = [bufs[r][chunk[c]].copy() for r, c in enumerate(sends)]
            for r, c in enumerate(sends):
                dst = (r + 1) % N
                if phase == "reduce-scatter":
                    bufs[dst][chunk[c]] += payload[r]
                else:
                    bufs[dst][chunk[c]] = payload[r]
                if messages is not None:
                    messages.append((phase, s, r, dst, c, payload[r].size))
    return [b.reshape(np.shape(arrays[0])) for b in bufs]


def shard_bounds(n, size):
    """Rank r's contiguous slice of n entries is [b[r], b[r+1]) (sizes differ by at most one)."""
    return [r * n // size for r in range(size + 1)]


def digest(*parts):
    """A short hash of arrays, bytes and reprs (what every rank must agree on)."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, np.ndarray):
            h.update(str((p.dtype, p.shape)).encode())
            h.update(np.ascontiguousarray(p).tobytes())
        else:
            h.update(p if isinstance(p, bytes) else repr(p).encode())
    return h.hexdigest()[:16]


def check_agreement(world, fingerprints):
    """fingerprints: {what: hash} of this rank. Gathered; if any rank's differ from rank 0's,
    every rank raises the same RanksDisagree naming what and which ranks."""
    every = world.exchange("the agreement check", fingerprints)
    wrong = {what: [r for r, fp in enumerate(every) if fp.get(what) != every[0][what]] for what in fingerprints}
    wrong = {what: ranks for what, ranks in wrong.items() if ranks}
    if wrong:
        said = "; ".join(f"{what} (rank{'s' if len(r) > 1 else ''} {', '.join(map(str, r))} "
                         f"differ{'' if len(r) > 1 else 's'} from rank 0)"
                         for what, r in wrong.items())
        raise RanksDisagree(f"the {world.size} ranks disagree on {said}; start every rank with the same "
                            "flags, data and checkpoint")


@contextlib.contextmanager
def on_root(world, what, context):
    """with context() entered on rank 0 alone (e.g. cli.out_dir_claimed: the checks of --out and
    its lock, which rank 0 holds); an error entering it is raised on every rank (a JobError,
    printed by rank 0) instead of leaving the others waiting in their first collective."""
    with contextlib.ExitStack() as stack:
        error = None
        if world.is_root:
            try:
                stack.enter_context(context())
            except (ValueError, OSError) as e:
                error = e
        said = world.exchange(what, None if error is None else str(error))[0]
        if said is not None:
            raise (JobError(said) if world.is_root else RankFailed(f"rank 0: {said}")) from None
        yield


def error_line(err):
    """How cli.main reports `err` on this rank: rank 0 (or a one-rank job) prints "error: ...";
    another rank prints nothing when rank 0 reports it (a JobError, or any error before the ranks
    talked: `finish_error` sends it to rank 0), else "error: rank r: ..." and then ends the job."""
    w = _WORLD
    if w is None or w.size == 1:
        return f"error: {err}"
    if alone(err):
        return f"error: rank {w.rank}: {err}"
    return f"error: {err}" if w.is_root else None


def alone(err):
    """Is `err` this rank's own (the others may be waiting for it in a collective)?"""
    from .train import TrainingDiverged

    w = _WORLD
    return w is not None and w.size > 1 and w.talked and not isinstance(err, (JobError, TrainingDiverged))


def finish_error(err, code=1):
    """After printing: a rank's own error must reach the others, which would wait forever. After
    the ranks started training it ends the whole job (MPI_Abort); before, it is sent to the
    exchange they wait in (`World.exchange`), where each raises RankFailed and exits too."""
    w = _WORLD
    if w is None or w.size == 1 or isinstance(err, JobError):
        return code
    if alone(err):
        sys.stderr.flush()
        w.abort(code)
    if not w.talked:
        try:
            w.exchange("an error", _Failed(str(err)))
        except JobError:
            pass  # RankFailed: this rank's own error among them, already printed
    return code
