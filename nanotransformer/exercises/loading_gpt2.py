"""Chapter 15's exercises: GPT-2's byte alphabet and its tensor names, against
hf.bytes_to_unicode and hf.our_name (exact: a dict and strings, no tolerance)."""
from .checker import Wrong, case_runner, register


def _bytes_to_unicode_case(student, tol):
    from ..hf import bytes_to_unicode  # lazy: hf imports the model and the tokenizer

    expected, got = bytes_to_unicode(), student()
    if not isinstance(got, dict):
        raise Wrong(f"mapping: expected a dict {{byte: character}}, got {type(got).__name__}")

    def show(c):
        return f"{c!r} (U+{ord(c):04X})" if isinstance(c, str) and len(c) == 1 else repr(c)

    for b in range(256):
        if got.get(b) != expected[b]:
            g = "no entry" if b not in got else show(got[b])
            raise Wrong(f"mapping[{b}] (byte {bytes([b])!r}): expected {show(expected[b])}, got {g}")
    extra = sorted(set(got) - set(expected), key=repr)
    if extra:
        raise Wrong(f"mapping: expected exactly the keys 0..255, got extra keys {extra[:5]}")
    return 0.0


def _our_name_case(keys):
    def fn(student, tol):
        from ..hf import our_name

        for key in keys:
            got, expected = student(key), our_name(key)
            if got != expected:
                why = " (not one of our parameters: skip it)" if expected is None else ""
                raise Wrong(f"our_name({key!r}): expected {expected!r}{why}, got {got!r}")
        return 0.0

    return fn


register(
    "bytes_to_unicode", "15-loading-gpt2",
    "bytes_to_unicode() -> dict {byte 0..255: printable character}, GPT-2's vocab.json alphabet", 0.0,
    case_runner([("all 256 bytes", _bytes_to_unicode_case)], "hf.bytes_to_unicode"),
)
register(
    "our_name", "15-loading-gpt2",
    "our_name(key) -> our parameter name for a GPT-2 tensor name, or None for a tensor to skip", 0.0,
    case_runner(
        [("embeddings", _our_name_case(["transformer.wte.weight", "wpe.weight"])),
         ("block weights and biases", _our_name_case(
             ["transformer.h.0.ln_1.weight", "h.11.attn.c_attn.bias", "transformer.h.3.mlp.c_proj.weight",
              "transformer.h.7.ln_2.bias", "h.2.attn.c_proj.weight", "transformer.ln_f.bias"])),
         ("buffers and the tied head", _our_name_case(["h.0.attn.bias", "transformer.h.5.attn.masked_bias",
                                                       "lm_head.weight"]))],
        "hf.our_name",
    ),
)
