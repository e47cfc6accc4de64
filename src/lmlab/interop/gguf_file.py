"""A GGUF file read straight from its bytes: metadata, tensor table, memory-mapped data.

GGUF (llama.cpp's format, version 2 and 3) is a little-endian header, then
``n_kv`` metadata entries (key string, value type, value), then ``n_tensors``
tensor infos (name, dims fastest-varying first, type, offset), then the tensor
data, aligned to ``general.alignment`` (32 by default).

The ``gguf`` package's own reader builds a numpy view for every string of every
metadata array: on SmolLM2's 49k tokens and 49k merges that is ~5 s, more than
everything else a load does. Here a string array is sliced from one bytes object
in a tight loop (~50 ms), numeric arrays are one ``np.frombuffer``, and tensors
stay views on a read-only memory map until a caller dequantizes or repacks them.
Every tensor's extent is checked against the file size while the table is read,
so a truncated file is refused before any model is built.

    f = GGUFFile("SmolLM2-135M-Instruct.Q4_1.gguf")
    f.metadata["llama.block_count"]       # 30
    t = f.tensors["blk.0.attn_q.weight"]  # GGUFTensor: shape (576, 576), type "Q4_1"
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmlab.errors import LmlabError

_MAGIC = b"GGUF"

# Metadata value types (gguf_type): scalar id -> struct format.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?",
            10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9

# ggml tensor types this reader knows by name: id -> (name, values per block, bytes per block).
# Sizes are those of ggml's block structs; a tensor of another type is refused by name.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8),
    28: ("F64", 1, 8), 30: ("BF16", 1, 2),
}


@dataclass
class GGUFTensor:
    """One tensor of a GGUF file: its raw bytes, not yet converted.

    ``shape`` is in torch's order (rows, cols): GGUF lists dims fastest-varying
    first, so it is the file's dims reversed. ``data`` is a read-only uint8 view
    on the memory map, ``shape[-1] / block * block_bytes`` bytes per row.
    """

    name: str
    shape: tuple[int, ...]
    type: str
    data: np.ndarray

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape))


class _Cursor:
    """Reads little-endian values from a bytes object, with an error naming the file."""

    def __init__(self, buf: bytes, path: Path) -> None:
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise LmlabError(f"{self.path}: not a valid GGUF file, or a truncated one "
                             "(the header ends early)")
        value = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += size
        return value[0] if len(value) == 1 else value

    def string(self) -> str:
        n = self.take("Q")
        end = self.pos + n
        if end > len(self.buf):
            raise LmlabError(f"{self.path}: not a valid GGUF file, or a truncated one "
                             "(a string runs past the end)")
        s = self.buf[self.pos:end].decode("utf-8", errors="replace")
        self.pos = end
        return s

    def strings(self, count: int) -> list[str]:
        # The hot loop of a load (49k tokens + 49k merges for SmolLM2): locals only.
        buf, pos, out = self.buf, self.pos, []
        unpack, append, size = struct.Struct("<Q").unpack_from, out.append, len(buf)
        try:
            for _ in range(count):
                (n,) = unpack(buf, pos)
                pos += 8
                append(buf[pos:pos + n].decode("utf-8", errors="replace"))
                pos += n
        except struct.error:
            pos = size + 1
        if pos > size:
            raise LmlabError(f"{self.path}: not a valid GGUF file, or a truncated one "
                             "(a string array runs past the end)")
        self.pos = pos
        return out

    def value(self, vtype: int) -> Any:
        if vtype == _STRING:
            return self.string()
        if vtype in _SCALARS:
            return self.take(_SCALARS[vtype])
        if vtype == _ARRAY:
            etype, count = self.take("I"), self.take("Q")
            if etype == _STRING:
                return self.strings(count)
            if etype in _SCALARS:
                dtype = np.dtype("<" + _SCALARS[etype])
                end = self.pos + count * dtype.itemsize
                if end > len(self.buf):
                    raise LmlabError(f"{self.path}: not a valid GGUF file, or a truncated one "
                                     "(an array runs past the end)")
                arr = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos)
                self.pos = end
                return arr.tolist()
            return [self.value(etype) for _ in range(count)]  # nested arrays: rare
        raise LmlabError(f"{self.path}: not a valid GGUF file (unknown value type {vtype})")


class GGUFFile:
    """The metadata (``dict``, in file order) and tensors (``dict`` name -> GGUFTensor)."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise LmlabError(f"{path}: GGUF file not found")
        self.path = path
        size = path.stat().st_size
        if size < 24:
            raise LmlabError(f"{path}: not a valid GGUF file, or a truncated one "
                             f"({size} bytes)")
        self._map = np.memmap(path, dtype=np.uint8, mode="r")
        # The header (metadata + tensor table) as one bytes object: slicing bytes is far
        # cheaper than slicing a memory map. Its length is unknown until it is parsed, so
        # read a generous prefix and grow it if the header turns out longer.
        header_len = min(size, 16 << 20)
        while True:
            try:
                self._parse(bytes(self._map[:header_len]), size)
                break
            except _ShortHeader:
                if header_len == size:
                    raise LmlabError(f"{path}: not a valid GGUF file, or a truncated one "
                                     "(the header ends early)") from None
                header_len = min(size, header_len * 4)

    def _parse(self, buf: bytes, size: int) -> None:
        path = self.path
        cur = _Cursor(buf, path)
        if buf[:4] != _MAGIC:
            raise LmlabError(f"{path}: not a valid GGUF file (bad magic {buf[:4]!r})")
        cur.pos = 4
        version = cur.take("I")
        if version not in (2, 3):
            raise LmlabError(f"{path}: GGUF version {version} is not supported (2 or 3)")
        n_tensors, n_kv = cur.take("Q"), cur.take("Q")
        try:
            self.metadata: dict[str, Any] = {}
            for _ in range(n_kv):
                key = cur.string()
                self.metadata[key] = cur.value(cur.take("I"))
            infos = []
            for _ in range(n_tensors):
                name = cur.string()
                dims = [cur.take("Q") for _ in range(cur.take("I"))]
                infos.append((name, dims, cur.take("I"), cur.take("Q")))
        except LmlabError:
            if len(buf) < size:
                raise _ShortHeader() from None
            raise
        self.version = version
        align = int(self.metadata.get("general.alignment", 32))
        start = -(-cur.pos // align) * align  # the data section begins aligned
        self.tensors: dict[str, GGUFTensor] = {}
        for name, dims, ttype, offset in infos:
            if ttype not in GGML_TYPES:
                raise LmlabError(f"{path}: tensor {name} has ggml type {ttype}, which lmlab "
                                 "does not know")
            tname, block, block_bytes = GGML_TYPES[ttype]
            shape = tuple(int(d) for d in reversed(dims))
            numel = int(np.prod(shape)) if shape else 1
            if shape and shape[-1] % block:
                raise LmlabError(f"{path}: tensor {name} has rows of {shape[-1]} values, not "
                                 f"a multiple of {tname}'s block of {block}")
            nbytes = numel // block * block_bytes
            begin = start + offset
            if begin + nbytes > size:
                raise LmlabError(f"{path}: not a valid GGUF file, or a truncated one (tensor "
                                 f"{name} ends at byte {begin + nbytes:,} of {size:,})")
            self.tensors[name] = GGUFTensor(name, shape, tname, self._map[begin:begin + nbytes])

    def get(self, key: str, default: Any = ...) -> Any:
        """A metadata value; missing -> ``default``, or an error naming the key."""
        if key in self.metadata:
            return self.metadata[key]
        if default is ...:
            raise LmlabError(f"{self.path}: GGUF metadata key {key!r} is missing")
        return default


class _ShortHeader(Exception):
    """The prefix read was too short for the header: read more and parse again."""
