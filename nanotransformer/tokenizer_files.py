"""The tokenizer files' reader: line by line, so that every error names the file and the line.

Format (see `tokenizer.py`'s docstring): a header line "nanotransformer-tokenizer 1 <kind>",
"name: <JSON>" lines, then "<base64 token bytes> <rank>" lines as in a tiktoken rank file.
`Reader` parses them for `CharTokenizer.load`, `BPETokenizer.load` and `from_tiktoken`;
`header_line(kind)` is what `save` writes first.

Does not: write files (each tokenizer's `save` does), or read pickles.
"""
import base64
import binascii
import json
from pathlib import Path

MAGIC, VERSION = "nanotransformer-tokenizer", 1
RANK_LINE = "'<base64 token bytes> <rank>'"


class Reader:
    """Reads a tokenizer file line by line, so that every error names the file and the line."""

    def __init__(self, path, data=None):
        self.path = Path(path)
        data = self.path.read_bytes() if data is None else data
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{self.path}: expected a UTF-8 text file, got bytes that are not "
                             f"valid UTF-8 at byte {e.start}") from None
        # split on "\n" only: str.splitlines would also split on U+2028 or U+0085, which JSON
        # strings may contain unescaped
        self.lines = text.split("\n")
        if self.lines[-1] == "":
            self.lines.pop()
        self.lineno = 0

    def error(self, expected, got):
        return ValueError(f"{self.path}: line {self.lineno}: expected {expected}, got {got}")

    def more(self):
        return self.lineno < len(self.lines)

    def next(self, expected):
        self.lineno += 1
        if self.lineno > len(self.lines):
            raise self.error(expected, "end of file (truncated?)")
        return self.lines[self.lineno - 1].rstrip("\r")

    def header(self, kind=None):
        """Check line 1 is 'nanotransformer-tokenizer 1 <kind>'; returns the kind."""
        expected = f"'{MAGIC} {VERSION} {kind or 'char|bpe'}'"
        line = self.next(expected)
        fields = line.split()
        if len(fields) != 3 or fields[0] != MAGIC or fields[1] != str(VERSION):
            raise self.error(expected, repr(line[:80]))
        if fields[2] not in ("char", "bpe") or (kind is not None and fields[2] != kind):
            raise self.error(expected + " (load_tokenizer() loads either kind)", repr(line[:80]))
        return fields[2]

    def field(self, name, ok, expected):
        """Parse a 'name: <JSON>' line; ok(value) -> bool checks the value's type."""
        line = self.next(f"'{name}: <JSON>'")
        key, sep, raw = line.partition(": ")
        if key != name or not sep:
            raise self.error(f"'{name}: <JSON>'", repr(line[:80]))
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as e:
            raise self.error(f"{name} as valid JSON", f"{raw[:80]!r} ({e.msg})") from None
        if not ok(value):
            raise self.error(f"{name} to be {expected}", repr(value)[:80])
        return value

    def ranks(self, count=None):
        """Read '<base64> <rank>' lines -> dict[bytes, int]: `count` lines, or all that remain."""
        ranks, seen = {}, set()
        while self.more() if count is None else len(ranks) < count:
            line = self.next(RANK_LINE)
            if count is None and not line.strip():
                continue  # tiktoken's loader skips blank lines too
            fields = line.split()
            if len(fields) != 2 or not (fields[1].isascii() and fields[1].isdigit()):
                raise self.error(RANK_LINE, repr(line[:80]))
            try:
                token = base64.b64decode(fields[0], validate=True)
            except (binascii.Error, ValueError):
                raise self.error(RANK_LINE + " with valid base64", repr(fields[0][:80])) from None
            rank = int(fields[1])
            if not token or token in ranks or rank in seen:
                raise self.error("a new, non-empty token with a new rank",
                                 f"token {token!r} rank {rank} (repeated or empty)")
            ranks[token] = rank
            seen.add(rank)
        return ranks

    def end(self):
        while self.more():
            line = self.next("end of file")
            if line.strip():
                raise self.error("end of file", repr(line[:80]))


def header_line(kind):
    return f"{MAGIC} {VERSION} {kind}"
