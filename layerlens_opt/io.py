"""The one writer: every file the tool writes goes through :func:`write_atomic`.

Guarantees (tested): the output is written to a temporary file in the same
folder and moved into place with ``os.replace`` (a reader sees the old file or
the whole new one, never half of one; concurrent writers leave one complete
file); a path that is also an input of the same command is refused; a write
that fails leaves the old file as it was; a symbolic link is written through (its target
replaced, the link kept) and a device, pipe or socket refused; JSON is written with
``allow_nan=False`` (NaN is not JSON, other tools reject it).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

from .errors import LayerlensError


class DuplicateKey(ValueError):
    """A JSON object that names a key twice (Python's json keeps the last silently)."""

    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _unique_keys(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKey(key)
        out[key] = value
    return out


class NotFinite(ValueError):
    """A NaN or Infinity in a JSON file; ``field`` is where it sits (``metadata.gradient_norms.q``)."""

    def __init__(self, constant: str, field: str):
        super().__init__(f"{field or 'the top level'} is {constant}, which is not JSON; write a finite number")
        self.constant, self.field = constant, field


class _Constant:
    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name


def _find_constant(value, path: str = "") -> tuple[str, str] | None:
    if isinstance(value, _Constant):
        return value.name, path
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        hit = _find_constant(item, f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}" if path else str(key))
        if hit:
            return hit
    return None


def strict_json(text: str):
    """``json.loads`` that refuses what strict JSON refuses and Python's reader lets through: a key named twice in one
    object (raises :class:`DuplicateKey`) and NaN / Infinity (raises :class:`NotFinite`, naming the field)."""
    data = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_Constant)
    if "NaN" in text or "Infinity" in text:
        hit = _find_constant(data)
        if hit:
            raise NotFinite(*hit)
    return data


def _same(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_output(path: str | Path, inputs: Iterable[str | Path] = (), what: str = "output") -> Path:
    """The output path (a symbolic link's target), after refusing a missing folder, a folder or another non-regular file in
    the way and any input of the command."""
    p = Path(path)
    if p.is_symlink():  # written through: the link's target gets the new content, the link stays a link
        p = Path(os.path.realpath(p))
    if p.exists() and p.is_dir():
        raise LayerlensError(f"cannot write {what} {path}: it is a folder; give a file name")
    if p.exists() and not p.is_file():
        raise LayerlensError(f"cannot write {what} {path}: it is not a regular file (a device, pipe or socket); give a file name")
    if not p.resolve().parent.is_dir():
        raise LayerlensError(f"cannot write {what} {path}: folder {p.parent} does not exist")
    for source in inputs:
        if source is not None and (_same(p, Path(source)) or p.resolve() == Path(source).resolve()):
            raise LayerlensError(f"refusing to write {what} onto {path}: it is an input of this command; choose another file name")
    return p


def write_atomic(path: str | Path, content: str | bytes | Callable[[str], None], inputs: Iterable[str | Path] = (),
                 what: str = "output") -> Path:
    """Write ``content`` (text, bytes, or a function that writes a file at the path it is given) atomically to ``path``."""
    p = check_output(path, inputs, what)
    try:
        fd, tmp = tempfile.mkstemp(dir=p.resolve().parent, prefix=f".{p.name}.", suffix=f".tmp{p.suffix}")
    except OSError as exc:
        raise LayerlensError(f"cannot write {what} {path}: {exc.strerror or exc}; nothing was changed there") from None
    try:
        if callable(content):
            os.close(fd)
            content(tmp)
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(content.encode("utf-8") if isinstance(content, str) else content)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, p)
    except OSError as exc:
        _remove(tmp)
        raise LayerlensError(f"cannot write {what} {path}: {exc.strerror or exc}; nothing was changed there") from None
    except BaseException:
        _remove(tmp)
        raise
    return p


def _remove(tmp: str) -> None:
    try:
        os.unlink(tmp)
    except OSError:
        pass


def json_text(obj: Any, what: str = "output") -> str:
    """``obj`` as indented JSON; a NaN or infinity is an error (it is not JSON)."""
    try:
        return json.dumps(obj, indent=1, allow_nan=False) + "\n"
    except ValueError:
        raise LayerlensError(f"the {what} holds a NaN or infinite number, which JSON cannot carry; check the inputs for NaN") from None
