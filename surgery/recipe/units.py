"""Numbers with units: `2.1B` tokens, `5GB` shards, `0.5%` fractions, `3e-4` rates.

Count suffixes K M B T are powers of 1000; byte suffixes KB MB GB TB are powers of 1000 too,
the way disk and model sizes are quoted. The allowed kinds depend on the setting.
"""

from __future__ import annotations

import math
import re

from surgery.errors import Pos, SurgeryError

COUNT = {"K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}
BYTES = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}

_NUMBER = re.compile(r"(?P<value>([0-9]+(\.[0-9]+)?|\.[0-9]+)([eE][+-]?[0-9]+)?)(?P<unit>KB|MB|GB|TB|K|M|B|T|%)?")

_KIND_HELP = {
    "plain": "a plain number",
    "count": "a count (suffixes K, M, B, T)",
    "bytes": "a size in bytes (KB, MB, GB, TB)",
    "fraction": "a fraction such as 0.5% or 0.005",
}


def parse_number(text: str, *, allow: tuple[str, ...], pos: Pos | None = None, what: str = "value") -> float:
    """The value of `text`, checked against the unit kinds in `allow`; always a finite number.

    A bare number is accepted by every kind (a plain byte count, a plain fraction).
    """
    m = _NUMBER.fullmatch(text)
    if not m:
        raise SurgeryError(f"`{text}` is not a number", pos=pos)
    unit = m.group("unit")
    if unit is None:
        value = float(m.group("value"))
    elif unit in COUNT and "count" in allow:
        value = float(m.group("value")) * COUNT[unit]
    elif unit in BYTES and "bytes" in allow:
        value = float(m.group("value")) * BYTES[unit]
    elif unit == "%" and "fraction" in allow:
        value = float(m.group("value")) / 100
    else:
        wanted = " or ".join(_KIND_HELP[k] for k in allow)
        at = Pos(pos.line, pos.col + m.start("unit")) if pos is not None else None  # the caret under the unit
        raise SurgeryError(f"{what} takes {wanted}, not the unit `{unit}`", pos=at)
    if not math.isfinite(value):  # `1e999`: Python reads it as infinity
        raise SurgeryError(f"{what} `{text}` is too large to be a number", pos=pos,
                           hint="numbers must be finite, below about 1.8e308")
    return value


def format_count(n: float) -> str:
    """1_234_000_000 -> '1.23B'."""
    for suffix, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{suffix}"
    return f"{n:g}"


def format_bytes(n: float) -> str:
    """5_000_000_000 -> '5GB'."""
    for suffix, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{suffix}"
    return f"{int(n)}B"
