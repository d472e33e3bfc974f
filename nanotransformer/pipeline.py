"""`pipeline("text-generation", model=...)`: the Hugging Face one-liner, running our NumPy GPT.

    from nanotransformer.pipeline import pipeline
    pipe = pipeline("text-generation", model="tests/fixtures/tiny-gpt2")   # or "gpt2", or a Llama / Qwen2
    pipe("Alice was", max_new_tokens=20, do_sample=False)
    -> [{"generated_text": "Alice was ..."}]          # the prompt included, as transformers does

Arguments mean what they mean in transformers:
    max_new_tokens       tokens to generate; wins over max_length when both are given
    max_length           prompt tokens + new tokens
    do_sample            False: greedy (argmax at every step); True: sample
    temperature, top_k, top_p   the sampling filters (top_k=0 and top_p=1.0 switch them off)
    num_return_sequences continuations per prompt (sampling or beam search only, as in transformers)
    num_beams            > 1: beam search (deterministic)
    return_full_text     False: only the new text
plus `seed` (ours: transformers uses torch's global seed) to make sampling repeatable, and
`pipeline(..., quantize="int8")` to decode with int8 weights (`quantize.quantize_model`).
Unset arguments come from the checkpoint's generation_config.json, else from transformers'
text-generation defaults (`DEFAULTS`). Generation stops at an end-of-text token (the checkpoint's
eos_token_id, which may list several, as Llama 3 Instruct's does), which is not part of the
returned text. A tokenizer whose tokenizer.json adds tokens before every text (Llama 3's
<|begin_of_text|>, `hf.prefix_ids`) gets them before the prompt, as transformers' tokenizer call
does; our `BPETokenizer.encode` never adds them itself.

The decoding itself is `generation.generate_ids` / `generation.beam_search_ids` (KV cache, sliding
window past the block size); this module only translates the arguments and the output.

Does not: pad and batch several prompts into one forward pass (a list of prompts runs one by
one), apply repetition penalties, stream, or handle chat messages.
"""
import warnings

import numpy as np

from . import hf
from .generation import beam_search_ids, generate_ids
from .model import GPT
from .quantize import check_quantize, quantize_model

TASKS = ("text-generation",)
DEFAULT_MODEL = "gpt2"  # transformers' default for this task (openai-community/gpt2)
# transformers' TextGenerationPipeline defaults (v5), for keys the checkpoint does not set
DEFAULTS = dict(max_new_tokens=256, do_sample=True, temperature=0.7, top_k=50, top_p=1.0)


def pipeline(task, model=None, tokenizer=None, *, dtype=np.float32, backend=None, quantize=None):
    """A text-generation pipeline.

    model: a checkpoint directory or hub name (loaded with hf.from_pretrained), or a GPT (then
    pass its tokenizer). tokenizer: None (the model's own), a directory/hub name, or a tokenizer
    with encode/decode. dtype, backend: as in hf.from_pretrained. quantize: None or "int8" (weight-only
    int8 linear layers and LM head, `quantize.quantize_model`).
    """
    if task not in TASKS:
        raise ValueError(f"task: expected one of {TASKS}, got {task!r}")
    check_quantize(quantize)
    model = DEFAULT_MODEL if model is None else model
    gen_config = {}
    if isinstance(model, GPT):
        if tokenizer is None:
            raise ValueError("tokenizer: expected a tokenizer (or a checkpoint path) to go with the GPT "
                             "passed as model, got None")
    elif isinstance(model, str) or hasattr(model, "__fspath__"):
        path = hf.resolve(model)
        gen_config = hf.generation_config(path)
        if tokenizer is None:
            tokenizer = path
        model = hf.from_pretrained(path, dtype=dtype, backend=backend)
    else:
        raise ValueError(f"model: expected a checkpoint directory, a hub name or a GPT, got {type(model).__name__}")
    prefix = ()
    if isinstance(tokenizer, str) or hasattr(tokenizer, "__fspath__"):
        tok_path = hf.resolve(tokenizer)
        prefix = hf.prefix_ids(tok_path)  # Llama 3's BOS; a tokenizer object brings none
        tokenizer = hf.tokenizer_from_pretrained(tok_path)
    if not (hasattr(tokenizer, "encode") and hasattr(tokenizer, "decode")):
        raise ValueError(f"tokenizer: expected an object with encode and decode, got {type(tokenizer).__name__}")
    if quantize is not None:
        model = quantize_model(model, quantize)
    return TextGenerationPipeline(model, tokenizer, gen_config, prefix_ids=prefix)


def _check_flag(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name}: expected True or False, got {value!r}")


class TextGenerationPipeline:
    """Callable: pipe(text or list of texts, **generation arguments) -> [{"generated_text": str}]
    (a list of such lists for a list of texts). See the module docstring for the arguments.

    generation_config: as `hf.generation_config` returns (eos_token_id: an id, or eos_token_ids: a
    list of them, to stop at). prefix_ids: ids put before every prompt (`hf.prefix_ids`).
    """

    def __init__(self, model, tokenizer, generation_config=None, prefix_ids=()):
        self.model = model
        self.tokenizer = tokenizer
        self.generation_config = {**DEFAULTS, **{k: v for k, v in (generation_config or {}).items() if v is not None}}
        eos = self.generation_config.get("eos_token_ids") or self.generation_config.get("eos_token_id")
        eos = [] if eos is None else eos if isinstance(eos, (list, tuple)) else [eos]
        self.eos_token_ids = [int(e) for e in eos]
        self.eos_token_id = self.eos_token_ids[0] if self.eos_token_ids else None
        self.prefix_ids = [int(i) for i in prefix_ids]
        specials = getattr(tokenizer, "special_tokens", {}) or {}
        self._special_ids = set(specials.values()) | set(self.eos_token_ids)

    def __repr__(self):
        c = self.model.config
        return (f"TextGenerationPipeline(GPT(n_layer={c.n_layer}, n_head={c.n_head}, d_model={c.d_model}, "
                f"vocab_size={c.vocab_size}, block_size={c.block_size}), eos_token_id={self.eos_token_id})")

    def __call__(self, text_inputs, *, max_length=None, max_new_tokens=None, do_sample=None, temperature=None,
                 top_k=None, top_p=None, num_return_sequences=1, num_beams=1, return_full_text=True, seed=None,
                 use_cache=True):
        if isinstance(text_inputs, (list, tuple)):
            return [self(t, max_length=max_length, max_new_tokens=max_new_tokens, do_sample=do_sample,
                         temperature=temperature, top_k=top_k, top_p=top_p, num_return_sequences=num_return_sequences,
                         num_beams=num_beams, return_full_text=return_full_text, seed=seed, use_cache=use_cache)
                    for t in text_inputs]
        if not isinstance(text_inputs, str):
            raise ValueError(f"text_inputs: expected a str or a list of str, got {type(text_inputs).__name__}")
        g = self.generation_config
        do_sample = g["do_sample"] if do_sample is None else do_sample
        _check_flag("do_sample", do_sample)
        _check_flag("return_full_text", return_full_text)
        temperature = g["temperature"] if temperature is None else temperature
        top_k = g["top_k"] if top_k is None else top_k
        top_p = g["top_p"] if top_p is None else top_p

        prompt_ids = np.asarray(self.prefix_ids + list(self.tokenizer.encode(text_inputs)), dtype=np.int64)
        if prompt_ids.size == 0:
            raise ValueError("text_inputs: expected a prompt of at least one token, got an empty prompt")
        T0 = min(len(prompt_ids), self.model.config.block_size)  # generate_ids crops longer prompts
        new = self._new_tokens(len(prompt_ids), max_length, max_new_tokens)
        eos = set(self.eos_token_ids)
        should_stop = (lambda new_ids: len(new_ids) > 0 and int(new_ids[-1]) in eos) if eos else None

        if not isinstance(num_beams, (int, np.integer)) or isinstance(num_beams, bool) or num_beams < 1:
            raise ValueError(f"num_beams: expected a positive integer, got {num_beams!r}")
        if num_beams > 1:
            results = beam_search_ids(self.model, prompt_ids, new, num_beams, num_return_sequences=num_return_sequences,
                                      use_cache=use_cache, should_stop=should_stop)
            rows = [seq for seq, _ in results]
        else:
            if do_sample:
                if not (isinstance(temperature, (int, float)) and temperature > 0):
                    raise ValueError(f"temperature: expected a number > 0 when do_sample=True "
                                     f"(do_sample=False is greedy), got {temperature!r}")
                if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 0:
                    raise ValueError(f"top_k: expected an integer >= 0 (0: no top-k filter), got {top_k!r}")
            elif num_return_sequences != 1:
                raise ValueError(f"num_return_sequences: expected 1 with greedy decoding (do_sample=False "
                                 f"gives one answer), got {num_return_sequences!r}; use do_sample=True or num_beams")
            rows = list(generate_ids(
                self.model, prompt_ids, new, temperature=float(temperature) if do_sample else 0.0,
                top_k=(int(top_k) or None) if do_sample else None,
                top_p=(None if top_p == 1.0 else top_p) if do_sample else None,
                num_return_sequences=num_return_sequences, seed=seed, use_cache=use_cache, should_stop=should_stop))
        out = []
        for row in rows:
            new_ids = [int(t) for t in row[T0:]]
            stop = next((k for k, t in enumerate(new_ids) if t in eos), None)
            if stop is not None:
                new_ids = new_ids[:stop]  # what follows the end of text is not text
            text = self.tokenizer.decode([t for t in new_ids if t not in self._special_ids])
            out.append({"generated_text": text_inputs + text if return_full_text else text})
        return out

    def _new_tokens(self, prompt_len, max_length, max_new_tokens):
        """How many tokens to generate: max_new_tokens, else max_length - prompt length (as transformers)."""
        for name, v in (("max_length", max_length), ("max_new_tokens", max_new_tokens)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0):
                raise ValueError(f"{name}: expected a non-negative integer or None, got {v!r}")
        if max_new_tokens is not None:
            return int(max_new_tokens)
        if max_length is None:  # transformers' default max_new_tokens wins over a stored max_length
            return int(self.generation_config["max_new_tokens"])
        if max_length <= prompt_len:
            warnings.warn(f"max_length={max_length} leaves no room after the {prompt_len}-token prompt: "
                          f"nothing is generated (use max_new_tokens)", stacklevel=3)
            return 0
        return int(max_length) - prompt_len
