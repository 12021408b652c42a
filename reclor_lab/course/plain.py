"""Plain data across the grading sandbox's wall: JSON for everything, safetensors for tensors.

What crosses (the hidden inputs going in, a submission's answers coming out) is encoded here,
on both sides, and nothing else: no pickle, no object of the submission's. A value becomes JSON
whose tensors are replaced by ``{"$t": key}`` into one safetensors blob; tuples, dicts with
non-string keys, numpy scalars and the few objects an exercise is handed (a model, a dropout, a
model shape) are tagged:

>>> blob, meta = encode([(1, 2.5), {"a": "x"}])
>>> decode(blob, meta)
[(1, 2.5), {'a': 'x'}]

An answer of a type the grader does not know decodes to an empty object of a class with the
same name (so a check says "it returned Foo"), never to the submission's object. A ``str`` or
``int`` subclass arrives as the plain value it holds: its ``__eq__`` stays behind the wall.
"""

from __future__ import annotations

import json
import math
import os
import re
import select
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

#: The most an encoded value may hold: nesting, items of one list or dict, bytes of JSON and of tensors.
MAX_DEPTH = 32
MAX_ITEMS = 100_000
MAX_JSON_BYTES = 16 * 2**20
MAX_TENSOR_BYTES = 64 * 2**20


#: One frame: 4-byte header length, header (JSON), 8-byte blob length, blob (safetensors).
_HEAD, _BLOB = struct.Struct(">I"), struct.Struct(">Q")
MAX_FRAME = 96 * 2**20


class PlainDataError(ValueError):
    """A value that cannot cross the wall (too big, too deep, malformed)."""


@dataclass
class Obj:
    """An object an exercise is handed, named by what builds it on either side of the wall
    (:func:`reclor_lab.course.runner.build` inside, the grader's context outside) instead of sent."""

    kind: str
    params: dict[str, Any] = field(default_factory=dict)


def opaque(type_name: str) -> object:
    """An empty object whose class is called ``type_name``: what an answer of an unknown type becomes."""
    name = re.sub(r"\W", "_", str(type_name))[:60] or "object"
    if name[0].isdigit():
        name = "_" + name
    return type(name, (), {"__repr__": lambda self: f"<{name} (not plain data)>"})()


class _Encoder:
    def __init__(self, objects: dict[int, Obj] | None = None) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self.objects = objects or {}
        self.items = 0
        self.tensor_bytes = 0

    def tensor(self, t: torch.Tensor) -> dict:
        grad = bool(t.requires_grad)
        t = torch.Tensor.as_subclass(t, torch.Tensor).detach()
        if t.device.type != "cpu":
            t = t.cpu()
        if t.is_complex() or t.layout != torch.strided:
            return {"$opaque": f"Tensor of {t.dtype}"}
        self.tensor_bytes += t.numel() * t.element_size()
        if self.tensor_bytes > MAX_TENSOR_BYTES:
            raise PlainDataError(f"tensors over {MAX_TENSOR_BYTES // 2**20} MiB")
        key = str(len(self.tensors))
        self.tensors[key] = t.contiguous().clone()
        return {"$t": key, "grad": grad}

    def value(self, x: Any, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise PlainDataError(f"nested deeper than {MAX_DEPTH}")
        self.items += 1
        if self.items > MAX_ITEMS:
            raise PlainDataError(f"more than {MAX_ITEMS} items")
        if id(x) in self.objects or isinstance(x, Obj):
            o = self.objects.get(id(x), x)
            return {"$o": o.kind, "params": self.value(o.params, depth + 1)}
        if isinstance(x, torch.Tensor):
            return self.tensor(x)
        if isinstance(x, list):
            return [self.value(v, depth + 1) for v in list.__iter__(x)]
        if isinstance(x, tuple):
            return {"$tuple": [self.value(v, depth + 1) for v in tuple.__iter__(x)]}
        if isinstance(x, dict):
            pairs = list(dict.items(x))
            if all(type(k) is str for k, _ in pairs):
                return {"$dict": {k: self.value(v, depth + 1) for k, v in pairs}}
            return {"$pairs": [[self.value(k, depth + 1), self.value(v, depth + 1)] for k, v in pairs]}
        return _scalar(x)


def _scalar(x: Any) -> Any:
    """A scalar as the plain value it holds (a subclass's own methods are not asked)."""
    if x is None or type(x) is bool:
        return x
    if isinstance(x, bool):
        return bool.__bool__(x)
    if isinstance(x, int):
        v = int.__add__(x, 0)
        return {"$int": str(v)} if abs(v) >= 2**53 else v
    if isinstance(x, float):
        v = float.__add__(x, 0.0)
        return v if math.isfinite(v) else {"$float": repr(v)}
    if isinstance(x, str):
        return str.__str__(x)
    if type(x).__module__ == "numpy" and hasattr(x, "dtype") and getattr(x, "shape", None) == ():
        return {"$np": str(x.dtype), "v": _scalar(x.item())}
    return {"$opaque": type(x).__name__}


def encode(value: Any, objects: dict[int, Obj] | None = None) -> tuple[bytes, str]:
    """``value`` as (safetensors bytes, JSON text). ``objects`` names objects by ``id`` (a model
    the grader holds → ``Obj("model")``). Raises :class:`PlainDataError` past the caps."""
    enc = _Encoder(objects)
    meta = json.dumps(enc.value(value), ensure_ascii=False)
    if len(meta) > MAX_JSON_BYTES:
        raise PlainDataError(f"over {MAX_JSON_BYTES // 2**20} MiB of JSON")
    return save_tensors(enc.tensors), meta


def decode(blob: bytes, meta: str, build=None) -> Any:
    """The value :func:`encode` wrote. ``build(Obj)`` turns a named object into the real one
    (default: the :class:`Obj` itself). Raises :class:`PlainDataError` on anything malformed."""
    if len(blob) > MAX_TENSOR_BYTES + 2**20 or len(meta) > MAX_JSON_BYTES:
        raise PlainDataError("over the size cap")
    try:
        tensors = load_tensors(blob) if blob else {}
        tree = json.loads(meta)
    except Exception as e:  # noqa: BLE001 - whatever the bytes were, one line
        raise PlainDataError(f"malformed ({type(e).__name__})") from None
    return _Decoder(tensors, build).value(tree)


class _Decoder:
    def __init__(self, tensors: dict[str, torch.Tensor], build) -> None:
        self.tensors, self.build = tensors, build

    def value(self, x: Any, depth: int = 0) -> Any:
        if depth > MAX_DEPTH + 2:
            raise PlainDataError("nested too deep")
        if isinstance(x, list):
            return [self.value(v, depth + 1) for v in x]
        if not isinstance(x, dict):
            return x
        for tag, read in self.TAGS.items():
            if tag in x:
                return read(self, x, depth + 1)
        raise PlainDataError(f"unknown tag in {sorted(x)[:3]}")

    def tensor(self, x: dict, depth: int) -> torch.Tensor:
        if x["$t"] not in self.tensors:
            raise PlainDataError(f"no tensor {x['$t']!r}")
        t = self.tensors[x["$t"]]
        return t.requires_grad_(True) if x.get("grad") and t.is_floating_point() else t

    def numpy(self, x: dict, depth: int) -> Any:
        import numpy as np

        try:
            return np.dtype(x["$np"]).type(self.value(x["v"], depth))
        except (TypeError, ValueError):
            return opaque(x["$np"])

    def obj(self, x: dict, depth: int) -> Any:
        o = Obj(str(x["$o"]), self.value(x.get("params", {}), depth))
        return self.build(o) if self.build else o

    TAGS = {
        "$t": tensor,
        "$tuple": lambda self, x, depth: tuple(self.value(v, depth) for v in x["$tuple"]),
        "$dict": lambda self, x, depth: {str(k): self.value(v, depth) for k, v in x["$dict"].items()},
        "$pairs": lambda self, x, depth: {_hashable(self.value(k, depth)): self.value(v, depth)
                                          for k, v in x["$pairs"]},
        "$int": lambda self, x, depth: int(x["$int"]),
        "$float": lambda self, x, depth: float(x["$float"]),
        "$np": numpy,
        "$o": obj,
        "$opaque": lambda self, x, depth: opaque(x["$opaque"]),
    }


def _hashable(k: Any) -> Any:
    try:
        hash(k)
    except TypeError:
        return repr(k)
    return k


@dataclass
class Raised:
    """What a call raised, as data: the exception's class name, whether it is a
    ``NotImplementedError`` (the stub), and its message."""

    type_name: str
    message: str
    not_implemented: bool = False
    memory: bool = False

    @classmethod
    def of(cls, e: BaseException) -> Raised:
        try:
            message = str(e)[:400]
        except Exception:  # noqa: BLE001 - a student's exception whose __str__ raises
            message = ""
        return cls(type(e).__name__[:60], message, isinstance(e, NotImplementedError), isinstance(e, MemoryError))

    def as_dict(self) -> dict:
        return {"type": self.type_name, "message": self.message, "stub": self.not_implemented,
                "memory": self.memory}

    @classmethod
    def from_dict(cls, d: dict) -> Raised:
        return cls(str(d.get("type", "Exception"))[:60], str(d.get("message", ""))[:400], bool(d.get("stub")),
                   bool(d.get("memory")))


# --- frames: how the answers travel (a pipe out of the sandbox) ----------------------------------------------

def write_frame(fd: int, header: dict, blob: bytes = b"") -> None:
    head = json.dumps(header, ensure_ascii=False).encode("utf-8")
    data = _HEAD.pack(len(head)) + head + _BLOB.pack(len(blob)) + blob
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def read_frames(fd: int, deadline: float, limit: int = MAX_FRAME, count: int | None = None) -> tuple[list, str]:
    """Frames ``(header, blob)`` from ``fd`` until EOF, ``count`` frames, the ``deadline``
    (``time.monotonic()``) or ``limit`` bytes; and why it stopped early (``""`` at EOF or count)."""
    buf, frames = bytearray(), []
    while count is None or len(frames) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            return frames, "time"
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return frames, ""
        buf += chunk
        if len(buf) > limit:
            return frames, "size"
        while True:
            frame = _take_frame(buf)
            if frame is None:
                break
            frames.append(frame)
            if count is not None and len(frames) >= count:
                return frames, ""
    return frames, ""


def _take_frame(buf: bytearray):
    if len(buf) < _HEAD.size:
        return None
    (n,) = _HEAD.unpack_from(buf)
    if len(buf) < _HEAD.size + n + _BLOB.size:
        return None
    (m,) = _BLOB.unpack_from(buf, _HEAD.size + n)
    end = _HEAD.size + n + _BLOB.size + m
    if len(buf) < end:
        return None
    try:
        header = json.loads(bytes(buf[_HEAD.size:_HEAD.size + n]))
    except ValueError:
        header = {"problem": "a malformed frame"}
    blob = bytes(buf[_HEAD.size + n + _BLOB.size:end])
    del buf[:end]
    return header if isinstance(header, dict) else {"problem": "a malformed frame"}, blob
