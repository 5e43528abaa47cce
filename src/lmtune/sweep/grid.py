"""``--grid key=v1,v2 key2=a,b``: the points of a sweep and their folder names.

A point is one value per grid key; the points are the grid's product, in the order the
keys and values were given (the last key varies fastest). A point's name is built
from the varied keys as the user wrote them, e.g. ``learning_rate=1e-5,seed=42``:
readable, stable across reruns, and safe as a folder name.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from lmtune.errors import UserError

# What a value may look like inside a folder name (no '/', no spaces, no shell quoting needed).
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9_.+\-\[\]:]+$")


@dataclass(frozen=True, kw_only=True)
class Point:
    index: int
    name: str
    config: list[str]
    """The point's ``key=value`` overrides, as given on the command line."""


def split_values(text: str) -> list[str]:
    """Splits at commas outside brackets, so list values (``betas=[0.9,0.95],[0.9,0.99]``) survive."""
    values, depth, current = [], 0, ""
    for ch in text:
        if ch == "," and depth == 0:
            values.append(current)
            current = ""
            continue
        depth += {"[": 1, "]": -1}.get(ch, 0)
        current += ch
    values.append(current)
    return [v.strip() for v in values]


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or not raw.strip():
            raise UserError(f"--grid {item!r} is not of the form key=value1,value2,...")
        if key in grid:
            raise UserError(f"--grid names '{key}' twice; give all its values once: {key}={','.join(grid[key])},{raw}.")
        values = split_values(raw)
        bad = [v for v in values if not v or not _SAFE_VALUE.match(v)]
        if bad:
            raise UserError(f"--grid {key}: value {bad[0]!r} cannot be part of a run's folder name; use letters, digits and . _ + - [ ] : only.")
        if len(set(values)) < len(values):
            raise UserError(f"--grid {key} lists a value twice: {raw}.")
        grid[key] = values
    if not grid:
        raise UserError("--grid is empty; give at least one key=value1,value2,... (e.g. --grid learning_rate=1e-5,2e-5 seed=1,2).")
    return grid


def grid_points(grid: dict[str, list[str]]) -> list[Point]:
    keys = list(grid)
    points = []
    for i, values in enumerate(itertools.product(*(grid[k] for k in keys))):
        pairs = [f"{k}={v}" for k, v in zip(keys, values)]
        points.append(Point(index=i, name=",".join(pairs), config=pairs))
    return points
