"""Pre-tokenisation: splitting text into the chunks that BPE merges within, with a split pattern.

A split pattern is a regex whose matches, taken left to right (`regex.finditer`), are the chunks.
Text that no match covers would simply vanish from `encode` (tiktoken drops it), breaking
decode(encode(s)) == s; a custom pattern such as r"\\p{L}+|\\s+" drops ", ! 42." that way. So:
- `check_pattern` refuses, with one ValueError naming the pattern and an uncovered example, a
  pattern that leaves part of `PROBE` (or of a given text, e.g. the training text) uncovered;
  `BPETokenizer` calls it whenever it takes a pattern (constructor, load, train);
- `split` never drops text: a run that no match covers becomes a chunk of its own (what Hugging
  Face's Split(..., "Isolated") does), in case a pattern passed the probe but misses other text.
Empty matches are dropped: they cover nothing.

Does not: choose a pattern (tokenizer.py has GPT-2's and GPT-4's), or work on bytes.
"""

# One of every kind of character a split pattern has to deal with: letters (ASCII, accented,
# Greek, Cyrillic, CJK, Hangul), a combining mark, digits (ASCII, Arabic-Indic, fullwidth),
# punctuation and symbols, every kind of whitespace and line break, control characters, an emoji
# with a variation selector and a joiner, and a private-use code point.
PROBE = ("Hello, World! it's 42.5% of $7 -- (ok?) [x] {y} <z> a_b #1 @me ~/a+b=c*d^e|f\\g "
         "café naïve e\u0301 Ωμέγα привет 中文字 한국어 ١٢٣ ４５６ ½ ²\t\n\r\n\x0b\x0c \u00a0\u2003\u2028\u2029"
         "\x00\x1b\x7f \u200b\u200d 👍🏽 ❤\ufe0f 👨\u200d👩 \ue000 «»„“”‘’…–—·•†‰€£¥₩ \n\n  end")


def first_gap(compiled, text):
    """(index, text) of the first run of `text` that no match of `compiled` covers, or None."""
    pos = 0
    for m in compiled.finditer(text):
        if m.start() > pos:
            return pos, text[pos:m.start()]
        pos = max(pos, m.end())
    return (pos, text[pos:]) if pos < len(text) else None


def check_pattern(source, compiled, text=None, what="probe text"):
    """Raise ValueError unless the matches of `compiled` (from `source`) cover all of `text`
    (default: PROBE, a sample of every kind of character)."""
    text = PROBE if text is None else text
    gap = first_gap(compiled, text)
    if gap is not None:
        index, run = gap
        around = text[max(0, index - 10):index + len(run[:20]) + 10]
        raise ValueError(f"pattern: expected a split pattern whose matches cover every character (text no "
                         f"match covers could not be encoded), got {source!r}, which leaves {run[:20]!r} "
                         f"uncovered in the {what} ({around!r}, index {index}); add a catch-all "
                         f"alternative such as '|\\s+|\\S', or use 'gpt4'")


def split(compiled, text, strict=None):
    """text: str -> chunks: list[str] that concatenate to text exactly. compiled: a regex or None
    (then the whole text is one chunk). Runs between matches are chunks of their own, unless
    `strict` is given (the pattern's source, as training does): then they are a ValueError."""
    if compiled is None:
        return [text] if text else []
    if not compiled.groups:  # findall returns the groups, not the matches, of a pattern with groups
        chunks = compiled.findall(text)
        if sum(map(len, chunks)) == len(text):  # the matches cover the text: the fast, usual case
            return [c for c in chunks if c] if "" in chunks else chunks
    if strict is not None:
        check_pattern(strict, compiled, text, "training text")
    chunks, pos = [], 0
    for m in compiled.finditer(text):
        if m.start() > pos:
            chunks.append(text[pos:m.start()])
        if m.end() > m.start():
            chunks.append(m.group())
        pos = max(pos, m.end())
    if pos < len(text):
        chunks.append(text[pos:])
    return chunks

