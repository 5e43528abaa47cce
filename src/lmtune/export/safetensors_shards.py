"""Writing safetensors shards one tensor at a time, in whatever order tensors arrive.

A safetensors file is an 8-byte little-endian header length, a JSON header naming
each tensor's dtype, shape and byte range, then the raw bytes. Since every name
and shape is known before the first tensor is read (from the model's meta
initialisation), the shards are planned and their headers written up front; each
converted tensor then goes straight to its byte range and is dropped. Peak memory
is one tensor, not one shard, which keeps a conversion within the weights' own size.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

from lmtune.errors import UserError

SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str) -> int:
    """'5GB', '500MB', '100KiB' or a plain number of bytes."""
    s = text.strip().upper().replace(" ", "")
    number = s.rstrip("KMGIB")
    unit = s[len(number):]
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in SIZE_UNITS or value <= 0:
        raise UserError(f"--max-shard-size {text} is not a size; give e.g. 5GB, 500MB or 100KB.")
    return int(value * SIZE_UNITS[unit])


@dataclass(kw_only=True)
class _Slot:
    shard: int
    begin: int  # absolute offset in the shard file
    shape: tuple[int, ...]
    nbytes: int
    written: bool = False


class ShardedSafetensorsWriter:
    def __init__(self, out_dir: Path, tensors: list[tuple[str, tuple[int, ...]]], dtype: torch.dtype, max_shard_bytes: int) -> None:
        self._dtype = dtype
        self._out_dir = out_dir
        item = torch.tensor([], dtype=dtype).element_size()
        sizes = [(name, shape, item * _numel(shape)) for name, shape in tensors]

        # Greedy in model order: a shard closes when the next tensor would overflow it.
        shards: list[list[tuple[str, tuple[int, ...], int]]] = [[]]
        used = 0
        for entry in sizes:
            if shards[-1] and used + entry[2] > max_shard_bytes:
                shards.append([])
                used = 0
            shards[-1].append(entry)
            used += entry[2]
        n = len(shards)
        self.files = [SINGLE_FILE] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        self.total_bytes = sum(e[2] for e in sizes)

        self._slots: dict[str, _Slot] = {}
        self._handles: list[BinaryIO] = []
        for index, (file, entries) in enumerate(zip(self.files, shards)):
            header: dict[str, object] = {"__metadata__": {"format": "pt"}}
            offset = 0
            for name, shape, nbytes in entries:
                header[name] = {"dtype": SAFETENSORS_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
                offset += nbytes
            raw = json.dumps(header, separators=(",", ":")).encode()
            raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as safetensors itself writes it
            start = 8 + len(raw)
            for name, shape, nbytes in entries:
                begin = start + header[name]["data_offsets"][0]  # type: ignore[index]
                self._slots[name] = _Slot(shard=index, begin=begin, shape=shape, nbytes=nbytes)
            fp = (out_dir / file).open("wb")
            fp.write(struct.pack("<Q", len(raw)))
            fp.write(raw)
            fp.truncate(start + offset)
            self._handles.append(fp)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        slot = self._slots.get(name)
        if slot is None:
            raise UserError(f"the checkpoint holds tensor '{name}', which the model's architecture does not have; the checkpoint does not match its config.")
        if slot.written:
            raise UserError(f"the checkpoint holds tensor '{name}' twice.")
        if tuple(tensor.shape) != slot.shape:
            raise UserError(f"checkpoint tensor '{name}' has shape {tuple(tensor.shape)} but the model's config gives {slot.shape}; the checkpoint does not match its config.")
        assert tensor.dtype == self._dtype
        data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
        fp = self._handles[slot.shard]
        fp.seek(slot.begin)
        fp.write(data.data)  # the array's buffer, no copy
        slot.written = True

    def finish(self) -> list[str]:
        """Closes the files and writes the index when there are several; returns the file names."""
        for fp in self._handles:
            fp.close()
        missing = [name for name, slot in self._slots.items() if not slot.written]
        if missing:
            raise UserError(f"the checkpoint lacks {len(missing)} tensor(s) the model needs, e.g. '{missing[0]}'; it is incomplete or of another architecture.")
        if len(self.files) > 1:
            index = {
                "metadata": {"total_size": self.total_bytes},
                "weight_map": {name: self.files[slot.shard] for name, slot in self._slots.items()},
            }
            (self._out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        return self.files

    def close(self) -> None:
        for fp in self._handles:
            if not fp.closed:
                fp.close()


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
