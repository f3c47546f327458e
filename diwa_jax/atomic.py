"""Files that are either whole or absent: written under a private temporary name, then renamed.

Readers and concurrent writers never see a half-written file, and a process killed mid-write leaves
only a hidden ``.tmp`` that nothing reads.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, BinaryIO, Callable


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: str | os.PathLike, value: Any, indent: int = 2) -> None:
    text = json.dumps(value, indent=indent).encode()
    atomic_write(path, lambda f: f.write(text))


def write_text(path: str | os.PathLike, text: str) -> None:
    data = text.encode()
    atomic_write(path, lambda f: f.write(data))
