"""A confusion matrix drawn as a PNG, with nothing but zlib and struct.

Cells shade from white to blue by their share of the row (the reference class);
each holds its count. Labels use a 3x5 pixel font drawn at twice its size, so the
picture needs no font files and no plotting library.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

# 3x5 glyphs, rows top to bottom; letters are drawn in capitals.
FONT = {
    "A": "010101111101101", "B": "110101110101110", "C": "011100100100011", "D": "110101101101110",
    "E": "111100110100111", "F": "111100110100100", "G": "011100101101011", "H": "101101111101101",
    "I": "111010010010111", "J": "001001001101010", "K": "101101110101101", "L": "100100100100111",
    "M": "101111111101101", "N": "110101101101101", "O": "010101101101010", "P": "110101110100100",
    "Q": "010101101110011", "R": "110101110101101", "S": "011100010001110", "T": "111010010010010",
    "U": "101101101101111", "V": "101101101101010", "W": "101101111111101", "X": "101101010101101",
    "Y": "101101010010010", "Z": "111001010100111", "0": "111101101101111", "1": "010110010010111",
    "2": "110001010100111", "3": "110001010001110", "4": "101101111001001", "5": "111100110001110",
    "6": "011100111101111", "7": "111001010010010", "8": "111101111101111", "9": "111101111001110",
    " ": "000000000000000", "/": "001001010100100", "(": "010100100100010", ")": "010001001001010",
    "-": "000000111000000", "_": "000000000000111", ".": "000000000000010", ":": "000010000010000",
    "&": "010101010101011", "\\": "100100010001001", "?": "110001010000010",
}
SCALE = 2
ADVANCE = 4 * SCALE  # glyph width plus one blank column
LINE = 5 * SCALE
PAD = 6
WHITE, BLACK, BLUE = (255, 255, 255), (0, 0, 0), (31, 86, 168)


class Canvas:
    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.pixels = bytearray(bytes(WHITE) * (width * height))

    def fill(self, x: int, y: int, w: int, h: int, color: tuple[int, int, int]) -> None:
        row = bytes(color) * w
        for yy in range(y, y + h):
            start = (yy * self.width + x) * 3
            self.pixels[start : start + 3 * w] = row

    def text(self, x: int, y: int, s: str, color: tuple[int, int, int]) -> None:
        for i, ch in enumerate(s.upper()):
            glyph = FONT.get(ch, FONT["?"])
            for bit, on in enumerate(glyph):
                if on == "1":
                    self.fill(x + i * ADVANCE + (bit % 3) * SCALE, y + (bit // 3) * SCALE, SCALE, SCALE, color)

    def png(self) -> bytes:
        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

        stride = self.width * 3
        raw = b"".join(b"\x00" + bytes(self.pixels[y * stride : (y + 1) * stride]) for y in range(self.height))
        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)  # 8-bit RGB
        return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def text_width(s: str) -> int:
    return len(s) * ADVANCE - SCALE


def cell_shade(fraction: float) -> tuple[int, int, int]:
    return tuple(round(w + (b - w) * fraction) for w, b in zip(WHITE, BLUE))  # type: ignore[return-value]


def layout(rows: Sequence[str], columns: Sequence[str]) -> tuple[int, int, int, int]:
    """(left, top, cell_w, cell_h): where the grid starts and how big a cell is."""
    cell_w = max(text_width(c) for c in [*columns, "00000"]) + 2 * PAD
    cell_h = LINE + 2 * PAD
    left = max(text_width(r) for r in [*rows, "TRUE \\ PRED"]) + 2 * PAD
    return left, cell_h, cell_w, cell_h


def write_confusion_png(path: Path, rows: Sequence[str], columns: Sequence[str], counts: Sequence[Sequence[int]]) -> Path:
    left, top, cw, ch = layout(rows, columns)
    canvas = Canvas(left + cw * len(columns) + 1, top + ch * len(rows) + 1)
    canvas.text(PAD, PAD, "true \\ pred", BLACK)
    for j, name in enumerate(columns):
        canvas.text(left + j * cw + (cw - text_width(name)) // 2, PAD, name, BLACK)
    for i, name in enumerate(rows):
        y = top + i * ch
        canvas.text(PAD, y + PAD, name, BLACK)
        total = sum(counts[i])
        for j, n in enumerate(counts[i]):
            x = left + j * cw
            fraction = n / total if total else 0.0
            canvas.fill(x, y, cw, ch, cell_shade(fraction))
            label = str(n)
            canvas.text(x + (cw - text_width(label)) // 2, y + PAD, label, WHITE if fraction > 0.5 else BLACK)
    for i in range(len(rows) + 1):  # grid lines
        canvas.fill(left, top + i * ch, cw * len(columns) + 1, 1, BLACK)
    for j in range(len(columns) + 1):
        canvas.fill(left + j * cw, top, 1, ch * len(rows) + 1, BLACK)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(canvas.png())
    tmp.replace(path)
    return path
