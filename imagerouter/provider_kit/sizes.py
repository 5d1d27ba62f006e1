"""Snapping an asked-for WxH to the multiple a provider's size rule needs, saying so.

Several backends serve the same models under the same custom-size rules (sides in
multiples of 16, say); each rounds an asked size the same way and tells the user.
"""

from __future__ import annotations

from imagerouter.geometry import round_size

__all__ = ["snap_size"]


def snap_size(
    width: int, height: int, multiple: int, notes: list[str], *, title: str, verb: str
) -> tuple[int, int]:
    """`width` x `height` rounded to multiples of `multiple`; when that changed the size, a
    note "<W>x<H> <verb> <w>x<h> (<title> needs multiples of <multiple>)" is appended."""
    snapped = round_size(width, height, multiple)
    if snapped != (width, height):
        notes.append(
            f"{width}x{height} {verb} {snapped[0]}x{snapped[1]} "
            f"({title} needs multiples of {multiple})"
        )
    return snapped
