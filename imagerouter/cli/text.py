"""Text for the terminal: stored strings shown safely, money shown alike, tables that fold.

Prompts reach the ledger from gateway clients, so a stored string may hold escape sequences
(window titles, colours, cursor moves) or rich markup; everything read back is escaped before
it is printed. Money and ids are never cut: a narrow terminal folds them onto a second line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from typing import Any

from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from ..pricing import quantize

__all__ = ["cell", "fit_last_column", "fold_table", "printable", "usd_texts"]

# Bidirectional overrides and isolates reorder what the eye reads (a "Trojan Source" prompt).
_BIDI = frozenset(chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A)))
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Never fewer than cents; never more than the millionths prices are stored to.
_MIN_DECIMALS, _MAX_DECIMALS = 2, 6
# Below this a prose column is not worth keeping apart: let rich fold the whole table.
_LEAST_PROSE = 6


def _escape(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def printable(text: str) -> str:
    """`text` with control characters (C0, DEL, C1) and bidi controls written as escapes."""
    return "".join(
        _escape(ch) if ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F or ch in _BIDI else ch
        for ch in text
    )


def cell(*lines: Any) -> Text:
    """A table cell from stored data, one line per argument: escaped (a newline inside a value
    too), and never read as rich markup."""
    return Text("\n".join("" if line is None else printable(str(line)) for line in lines))


def usd_texts(amounts: Iterable[Decimal | None]) -> list[str]:
    """`$` amounts with one number of decimals for all of them (enough for the most precise,
    at least cents), so a column of money lines up and reads alike. None gives ""."""
    values = [None if amount is None else quantize(Decimal(amount)) for amount in amounts]
    decimals = _MIN_DECIMALS
    for value in values:
        if value is not None:
            exponent = value.as_tuple().exponent
            if isinstance(exponent, int):
                decimals = max(decimals, min(-exponent, _MAX_DECIMALS))
    step = Decimal(1).scaleb(-decimals)
    return [
        "" if value is None else f"{'-' if value < 0 else ''}${abs(value).quantize(step)}"
        for value in values
    ]


def fold_table(
    title: str,
    columns: Iterable[str],
    *,
    right: Iterable[str] = (),
    widths: Mapping[str, int] | None = None,
) -> Table:
    """A table whose cells fold instead of ending in '…': a cut id or amount is a wrong one.
    No vertical rules, so an 80-column terminal has room for the data."""
    aligned = set(right)
    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1, 0, 0))
    for column in columns:
        table.add_column(
            column,
            justify="right" if column in aligned else "left",
            overflow="fold",
            no_wrap=False,
            width=(widths or {}).get(column),
        )
    return table


def fit_last_column(console: Console, build: Callable[[int | None], Table]) -> Table:
    """`build(width)` makes a table whose last column (prose: a prompt, a note) takes `width`.
    That column gets what the others leave, so rich never has to squeeze, and so fold, the
    columns before it (ids, providers, money). Too narrow a terminal folds everything."""
    probe = build(1)
    natural = Measurement.get(console, console.options.update_width(10_000), probe).maximum
    room = console.width - (natural - 1)
    return build(room if room >= _LEAST_PROSE else None)
