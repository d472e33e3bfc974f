"""The book's autograder: `check(name, student_fn)` tests one exercise and says what is wrong.

    from nanotransformer.exercises import check
    def layernorm_backward(dout, cache):
        ...                                  # your code
    check("layernorm_backward", layernorm_backward)

prints either

    layernorm_backward: passed (2 cases, max relative error 4.1e-11 vs finite differences)

or exactly which output tensor and index is wrong and by how much:

    layernorm_backward: FAILED on case 'x (2, 3, 6), shifted and scaled'
      dx[0, 1, 4]: expected -1.093512e+00, got -9.873221e-01, relative error 3.5e-02 (tolerance 1e-06);
      36 of 36 entries are off

Each exercise is named after the package function it asks for (`merge` is `bpe.merge`,
`adamw_update` is `optim.adamw_update`, `mask_tokens` is `tasks.mask_tokens`, ...), and is judged
- if it is a backward pass: against central finite differences of the package's forward (a live
  gradient check, `gradcheck.numeric_grad`), so the verdict never depends on the package's own
  backward;
- otherwise (Adam step, schedules, BPE merge, top-p, masks, metrics, ...): against that package
  function itself, or, where the package has none to compare with, the definition (`a @ b`, an
  analytic gradient).

Errors are relative to the scale of the whole tensor, `max|a - e| / max(|a| + |e|)`, the same
measure as `gradcheck.rel_error`. `check` never raises on a wrong answer or on the student's
exception: it prints the diagnosis and returns False, so an exercise notebook runs top to bottom.
A stub that raises NotImplementedError prints "not implemented yet".

`EXERCISES` maps each name to its chapter and the signature the student implements;
`exercise_help(name)` prints it (`exercise_help(None)` lists them all).

Layout: one module per chapter, named after it (`attention.py` holds chapter 04's exercises,
`bert.py` chapter 12's, ...), each registering its exercises with `checker.register`; the
comparison machinery is `checker.py`.

Does not: time the student's code (chapter 10's kernels are judged for their result and their
structure, tile-sized products and one pass over the keys, not their speed) or grade style.
"""
import os
import traceback

# each chapter's module registers its exercises on import
from . import (  # noqa: F401
    adam,
    attention,
    backprop,
    bert,
    cross_entropy,
    dpo,
    embeddings,
    encoder_decoder,
    finetuning,
    generation,
    gpt,
    instruction_tuning,
    language_models,
    layernorm_mlp,
    llama,
    loading_gpt2,
    lora,
    making_it_fast,
    metrics,
    scaling_out,
    tokenization,
)
from .checker import EXERCISES, RUNNERS, Wrong

__all__ = ["check", "exercise_help", "EXERCISES"]

# frames under the package are the checker's and the references'; the student's code is elsewhere
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def exercise_help(name):
    """Print the chapter and signature of exercise `name` (or list all when name is None)."""
    names = sorted(EXERCISES, key=lambda n: (EXERCISES[n].chapter, n)) if name is None else [name]
    width = max(len(n) for n in names)
    for n in names:
        ex = EXERCISES[n]
        print(f"{n:>{width}}  [{ex.chapter}]  {ex.signature}")


def check(name, student_fn):
    """Grade `student_fn` for exercise `name`. Prints "passed" or a diagnosis; returns True/False.

    Never raises for a wrong or crashing answer; only an unknown `name` is an error.
    """
    if name not in EXERCISES:
        raise ValueError(f"name: expected one of {sorted(EXERCISES)}, got {name!r}")
    ex = EXERCISES[name]
    try:
        detail = RUNNERS[name](student_fn, ex.tol)
    except NotImplementedError:
        print(f"{name}: not implemented yet -- fill in the stub: {ex.signature}")
        return False
    except Wrong as w:
        print(f"{name}: FAILED {w}")
        return False
    except Exception as e:  # the student's code crashed: show where, in their code
        frames = traceback.extract_tb(e.__traceback__)
        where = next((f for f in reversed(frames) if not os.path.abspath(f.filename).startswith(_PACKAGE_DIR)), frames[-1])
        print(f"{name}: your function raised {type(e).__name__}: {e}\n  at {where.filename}:{where.lineno}: {where.line}")
        return False
    print(f"{name}: passed ({detail})")
    return True
