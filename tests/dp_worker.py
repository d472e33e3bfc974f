"""One tiny training run for tests/test_distributed.py, started as `python tests/dp_worker.py ...`
(one process) or `mpirun -n N python tests/dp_worker.py ...` (N ranks): the one Trainer, a tiny
model of one kind, float32, the NumPy backend; rank 0 writes the per-step losses and the final
parameters to OUT (.npz). --resume continues the checkpoint in --ckpt; --ckpt alone writes one."""
import argparse
import os
import signal
import sys

import numpy as np

from nanotransformer.bert import BERT, BERTConfig
from nanotransformer.data import TokenData, build_tokenizer
from nanotransformer import distributed
from nanotransformer.distributed import world
from nanotransformer.model import GPT, GPTConfig
from nanotransformer.tasks import MaskedLMTask, char_vocab, encode_batch
from nanotransformer.train import Trainer, TrainConfig

TEXT = "the quick brown fox jumps over the lazy dog.\n" * 40


def task_and_model(kind, dropout, seed, dtype=np.float32):
    if kind == "gpt":
        tok = build_tokenizer(TEXT, "char")
        cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=2, n_head=2, d_model=16, dropout=dropout,
                        backend="numpy")
        return TokenData(tok.encode(TEXT), 0.1, "fox"), GPT(cfg, dtype=dtype, seed=seed)
    vocab = char_vocab(TEXT)  # bert: masked LM, a different number of masked tokens in every row
    rows = encode_batch(vocab, [TEXT[i : i + 15] for i in range(0, 300, 7)], 16)
    cfg = BERTConfig(vocab_size=len(vocab), block_size=16, n_layer=1, n_head=2, d_model=16, dropout=dropout,
                     backend="numpy")
    return MaskedLMTask(len(vocab), 16, rows=rows, mask_prob=0.3), BERT(cfg, dtype=dtype, seed=seed)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--kind", default="gpt", choices=("gpt", "bert"))
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--stop-after", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--shard", action="store_true")
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ckpt", default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--no-reduce", action="store_true", help="break the all-reduce (to see the test fail)")
    p.add_argument("--fail-rank", type=int, default=None, help="this rank raises an OSError at --fail-step")
    p.add_argument("--fail-step", type=int, default=2)
    p.add_argument("--kill", action="store_true", help="the --fail-rank rank is killed (SIGKILL) instead of raising")
    a = p.parse_args(argv)
    w = world()
    try:  # errors as cli.main reports them
        return run(a, w)
    except (ValueError, OSError) as e:
        line = distributed.error_line(e)
        if line:
            print(line, file=sys.stderr)
        return distributed.finish_error(e)


def run(a, w):
    if a.no_reduce:
        w.allreduce_sum = lambda buf: buf
    data, model = task_and_model(a.kind, a.dropout, a.seed)
    over = dict(grad_accum=a.grad_accum, shard_optimizer=a.shard, batch_size=a.batch_size)
    if a.resume:
        tr = Trainer.from_checkpoint(a.ckpt, data, progress=False, overrides=over)
    else:
        cfg = TrainConfig(max_steps=a.steps, lr=3e-3, warmup=2, eval_interval=3, eval_iters=3, seed=a.seed, **over)
        tr = Trainer(model, data, cfg, out_dir=a.ckpt, progress=False)
    if a.fail_rank == w.rank:
        step = tr.train_step

        def failing_step():
            if tr.step + 1 == a.fail_step and a.kill:
                os.kill(os.getpid(), signal.SIGKILL)
            if tr.step + 1 == a.fail_step:
                raise OSError(f"step {a.fail_step}: rank {w.rank} failed on purpose")
            return step()

        tr.train_step = failing_step
    tr.fit(log=False, stop_after=a.stop_after)
    if w.is_root:
        np.savez(a.out, loss=np.array(tr.history["loss"]), params=tr.model.params,
                 eval=np.array([[e["train"], e["val"]] for e in tr.history["eval"]]),
                 moments=np.array([tr.opt.state_bytes()]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
