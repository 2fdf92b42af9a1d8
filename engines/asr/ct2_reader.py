"""Reading a CTranslate2 ``model.bin`` (binary format v6) into numpy arrays, without CTranslate2.

Layout: ``u32 version``, ``str spec``, ``u32 revision``, ``u32 count``, then per
variable ``str name, u8 rank, u32 dims[rank], u8 dtype, u32 nbytes, bytes``,
then ``u32 aliases`` and ``str alias, str target`` pairs. Strings are a u16
length (counting a trailing NUL) and the bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from engines.errors import WeightsError

_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


@dataclass(frozen=True)
class CT2Model:
    spec: str
    revision: int
    variables: dict[str, npt.NDArray[np.generic]]
    aliases: dict[str, str]

    def get(self, name: str) -> npt.NDArray[np.generic]:
        return self.variables[self.aliases.get(name, name)]


class _Cursor:
    def __init__(self, data: bytes, path: Path) -> None:
        self.data, self.pos, self.path = data, 0, path

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise WeightsError(f"{self.path} is truncated (needed {n} bytes at offset {self.pos})")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return int(self.take(1)[0])

    def u16(self) -> int:
        return int(struct.unpack("<H", self.take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack("<I", self.take(4))[0])

    def string(self) -> str:
        return self.take(self.u16()).rstrip(b"\0").decode("utf-8")


def read_ct2(path: Path) -> CT2Model:
    """Every variable of a CTranslate2 model file, as numpy arrays (read-only views of the file)."""
    if not path.is_file():
        raise WeightsError(f"CTranslate2 model not found: {path}")
    cur = _Cursor(path.read_bytes(), path)
    version = cur.u32()
    if version != 6:
        raise WeightsError(f"{path}: CTranslate2 binary version {version} is not supported (expected 6)")
    spec, revision = cur.string(), cur.u32()
    variables: dict[str, npt.NDArray[np.generic]] = {}
    for _ in range(cur.u32()):
        name = cur.string()
        dims = tuple(cur.u32() for _ in range(cur.u8()))
        dtype_id, nbytes = cur.u8(), cur.u32()
        if dtype_id not in _DTYPES:
            raise WeightsError(f"{path}: variable {name} has unsupported type id {dtype_id}")
        array = np.frombuffer(cur.take(nbytes), dtype=_DTYPES[dtype_id])
        variables[name] = array.reshape(dims) if dims else array.reshape(())
    aliases = {}
    if cur.pos < len(cur.data):
        for _ in range(cur.u32()):
            alias = cur.string()
            aliases[alias] = cur.string()
    return CT2Model(spec, revision, variables, aliases)
