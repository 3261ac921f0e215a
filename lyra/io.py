"""File helpers: paths from a config (package:// or relative), atomic writes (a temporary file beside
the target, then rename) and checksums."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.resources
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from lyra.errors import ConfigError

PACKAGE_SCHEME = "package://"  # a file inside an installed Python package: package://pkg/rel/path


def package_file(value: str) -> Path:
    """The file a ``package://pkg/rel/path`` value names: data shipped in an installed Python package."""
    package, _, rel = value.removeprefix(PACKAGE_SCHEME).partition("/")
    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError:
        raise ConfigError(f"{value}: Python package {package!r} is not installed") from None
    target = root.joinpath(rel)
    if not target.is_file():
        raise ConfigError(f"{value}: no file {rel!r} in package {package!r}")
    return Path(str(target))


def resolve_path(value: str | os.PathLike | None, base_dir: str | os.PathLike = ".") -> str | None:
    """A file path from the config: `package://pkg/rel/path` (data shipped in a Python package) or a
    path relative to `base_dir` (the working directory, as in Snakemake)."""
    if value is None:
        return None
    value = str(value)
    if value.startswith(PACKAGE_SCHEME):
        return str(package_file(value))
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (Path(base_dir) / p).resolve())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's directory; on success rename it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def _jsonable(x: Any) -> Any:
    import numpy as np

    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")
