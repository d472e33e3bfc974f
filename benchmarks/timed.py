"""What the wall-clock-budget benchmarks share (quality_shakespeare.py, make_pretrained.py,
gpt2_vs_llama.py): a learning rate that follows warm-up + cosine over *time* instead of steps, so
a run's schedule ends annealed at its deadline however loaded the shared machine is.
"""
import math


def lr_by_time(elapsed, budget, lr, warmup_seconds, min_lr):
    """Learning rate after `elapsed` seconds of a `budget`-second run: linear warm-up to lr over
    warmup_seconds, then cosine decay to min_lr at the budget."""
    if elapsed < warmup_seconds:
        return lr * max(elapsed, 1e-3) / warmup_seconds
    prog = min(1.0, (elapsed - warmup_seconds) / max(1e-9, budget - warmup_seconds))
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * prog))
