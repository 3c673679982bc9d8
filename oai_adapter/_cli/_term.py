"""Terminal output for the CLI: colour when a person is watching, plain text when a script is.

No dependency beyond the standard library: the library's users should not pay for a CLI's
rendering toolkit. Colour is used only when the stream is a TTY and `NO_COLOR` is unset
(no-color.org); tables are aligned plain text so that `grep`/`awk` can read them; the progress
bar rewrites one line with `\\r` and is drawn only on a TTY.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TextIO

__all__ = ["Term", "plural", "render_table"]

_CODES = {"bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33", "cyan": "36"}


def plural(count: int, noun: str) -> str:
    """`1 token`, `2 tokens`, `0 tokens` (English nouns of the CLI's output take an `s`)."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _wants_color(stream: TextIO) -> bool:
    if os.environ.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class Term:
    """Where the CLI writes: `out` for results (tokens, tables, JSON), `err` for the rest."""

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self.out = out
        self.err = err
        self.out_color = _wants_color(out)
        self.err_color = _wants_color(err)
        self._progress_drawn = False

    def paint(self, text: str, style: str, *, err: bool = False) -> str:
        if not (self.err_color if err else self.out_color):
            return text
        return f"\x1b[{_CODES[style]}m{text}\x1b[0m"

    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def note(self, text: str, style: str = "dim") -> None:
        """A line for the person watching, on stderr (so stdout stays the result)."""
        self.err.write(self.paint(text, style, err=True) + "\n")
        self.err.flush()

    def error(self, text: str) -> None:
        """`oai-adapter: error: …` on stderr: one line a script can match."""
        self.err.write(self.paint("oai-adapter: error: ", "red", err=True) + text + "\n")
        self.err.flush()

    def progress(self, done: int, total: int, failed: int, width: int = 30) -> None:
        """Redraw the progress line on stderr; only on a TTY."""
        if not _isatty(self.err):
            return
        filled = width * done // max(total, 1)
        bar = "█" * filled + "·" * (width - filled)
        tail = f" {failed} failed" if failed else ""
        self.err.write(f"\r{bar} {done}/{total}{tail}")
        self.err.flush()
        self._progress_drawn = True

    def end_progress(self) -> None:
        if self._progress_drawn:
            self.err.write("\n")
            self.err.flush()
            self._progress_drawn = False


def _isatty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, two spaces apart; the last column is not padded."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        padded = [c.ljust(widths[i]) for i, c in enumerate(cells[:-1])]
        return "  ".join([*padded, cells[-1]]).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)]) + "\n"
