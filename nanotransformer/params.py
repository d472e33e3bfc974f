"""The one parameter store: every parameter of a model in one flat buffer, with named views.

    store = ParamStore([("wte", (V, C)), ("h.0.ln_1.w", (C,)), ...], dtype=np.float32)
    store.p["wte"]          # a (V, C) view into store.params: writing it writes the buffer
    store.g["wte"]          # ... and into store.grads, laid out the same way
    store.decay_mask        # 1 on matrices (weight decay applies), 0 on biases and norm gains
    store.views(m)          # named views of any array laid out like params (optimiser moments)

llm.c's layout (`malloc_and_point_parameters`): one allocation, every tensor a reshaped slice of
it, so the optimiser, gradient clipping, checkpoints and (one day) an all-reduce are single
passes over one contiguous array. Every model (GPT, BERT, the encoder-decoder, the classifier)
is a `ParamStore` subclass: it lists its `(name, shape)` specs in buffer order and says how to
initialise its matrices (`init_std`); everything else here is shared.

Freezing: `frozen` is the number of leading buffer entries that training leaves alone (their
gradient is zero, the optimiser skips them). Models lay parameters out bottom-up (embeddings,
block 0, ..., block L-1, final norm, heads), so "train only the top k blocks" is one offset. `freeze()` freezes a whole model for good: it
drops the gradient buffer (grads = None, g = {}), as LoRA does to its base (`lora.py`).

Dimension legend: N number of parameters (the buffer's length).

Does not: keep several dtypes (one buffer, one dtype), or share storage between two names
(a tied weight is one name used twice, its gradient the sum of both uses).
"""
import math

import numpy as np

from .validation import check_array


class ParamStore:
    """Parameters and gradients in two flat buffers with named views (`p`, `g`).

    Subclasses call `self.build(specs, dtype, seed)` from their __init__ and may override
    `init_std(name, shape)`.
    """

    frozen = 0  # leading entries of the buffer that are not trained (see module docstring)

    def build(self, specs, dtype=np.float32, seed=0):
        self.dtype = np.dtype(dtype)
        if not np.issubdtype(self.dtype, np.floating):
            raise ValueError(f"dtype: expected a floating-point dtype, got {self.dtype}")
        self.specs = [(name, tuple(shape)) for name, shape in specs]
        n = sum(math.prod(s) for _, s in self.specs)
        self.bind(np.zeros(n, dtype=self.dtype), np.zeros(n, dtype=self.dtype))
        self.decay_mask = np.zeros(n, dtype=self.dtype)
        for view in self.views(self.decay_mask).values():
            view[...] = 1.0 if view.ndim == 2 else 0.0  # decay matrices, not biases or norm gains
        if seed is not None:  # None: leave the buffer at zero (the caller fills it)
            self.init_weights(seed)

    def bind(self, params, grads):
        """Point the store at other buffers of the same layout (the classifier makes its GPT body
        live at the front of its own buffer this way). Values are not copied."""
        self.params, self.grads = params, grads
        self.p = self.views(params)
        self.g = self.views(grads)

    def freeze(self):
        """Freeze every parameter for good: drop the gradient buffer (grads = None, g = {}), so
        nothing can be written there and no optimiser should be built on this store. The
        parameters are untouched. Returns self."""
        self.grads, self.g = None, {}
        return self

    def views(self, flat):
        """{name: view} of a flat array laid out like `params` (also used for optimiser moments)."""
        n = sum(math.prod(s) for _, s in self.specs)
        check_array("flat", flat, shape=(n,))
        out, offset = {}, 0
        for name, shape in self.specs:
            size = math.prod(shape)
            out[name] = flat[offset : offset + size].reshape(shape)
            offset += size
        return out

    def offset(self, name):
        """Index in the buffer of parameter `name`'s first entry."""
        offset = 0
        for n, shape in self.specs:
            if n == name:
                return offset
            offset += math.prod(shape)
        raise ValueError(f"name: expected a parameter of this model, got {name!r}")

    def num_params(self):
        """Number of parameters (a tied weight counts once)."""
        return int(self.params.size)

    def init_std(self, name, shape):
        """Standard deviation of matrix `name` at initialisation (GPT-2's 0.02 unless overridden)."""
        return 0.02

    def init_weights(self, seed=0):
        """Matrices ~ N(0, init_std), biases 0, norm gains 1. Drawn in float64 then cast, so
        float32 and float64 models built with the same seed hold the same values."""
        rng = np.random.default_rng(seed)
        for name, shape in self.specs:
            if name.endswith((".b", ".bias")):
                val = np.zeros(shape)
            elif len(shape) == 1:  # a norm's gain
                val = np.ones(shape)
            else:
                val = rng.normal(0.0, self.init_std(name, shape), size=shape)
            self.p[name][...] = val

    def state_dict(self):
        """{name: array view} of every parameter."""
        return dict(self.p)

    def load_state_dict(self, tensors, source="tensors"):
        """Copy {name: array} into the buffer; every name must be present with the right shape
        (checkpoint.py also rejects non-finite values). `source` names where the tensors came
        from, for the error message."""
        for name, shape in self.specs:
            if name not in tensors:
                raise ValueError(f"{source}: missing tensor {name!r} (shape {shape})")
            if tuple(tensors[name].shape) != shape:
                raise ValueError(f"{source}: tensor {name!r} expected shape {shape}, got {tuple(tensors[name].shape)}")
        for name, _ in self.specs:
            self.p[name][...] = tensors[name]

    def config_dict(self):
        """The model's config as the dict a checkpoint stores (`checkpoint.py`)."""
        return self.config.to_dict()

    @classmethod
    def from_config(cls, d, dtype=np.float32, backend=None):
        """Rebuild from `config_dict()` (e.g. a checkpoint's JSON); backend overrides the saved one."""
        d = dict(d)
        if backend is not None:
            d["backend"] = backend
        return cls(cls.config_class.from_dict(d), dtype=dtype)
