"""Files: atomic writes (nothing half-written is ever left as if complete) and prompt sets."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from egrpo.errors import UserError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def as_created(path: str | os.PathLike) -> None:
    """Give a temporary file (0600) or directory (0700) the mode a plain open()/mkdir() would have
    under the current umask, so that collaborators read results as they read any other file."""
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~_umask())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    as_created(tmp)
    os.replace(tmp, path)


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=float) + "\n")


@contextmanager
def atomic_dir(path: str | os.PathLike):
    """Yield a temporary sibling directory; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    as_created(tmp)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, path)


def replace_dir(tmp: Path, path: Path) -> None:
    """Put the finished directory `tmp` at `path`, replacing what was there (the old one is moved
    aside first, then removed)."""
    old = path.with_name(f".{path.name}.old")
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def save_figure(fig, path: str | os.PathLike) -> None:
    """Save a matplotlib figure atomically (PNG)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    as_created(tmp)
    os.replace(tmp, path)


@dataclass(frozen=True)
class Prompt:
    text: str
    style: str | None = None


def load_prompts(path: str | os.PathLike, key: str = "prompts") -> list[Prompt]:
    """Read a prompt set: a text file (one prompt a line, '#' comments) or HPD-style JSON.

    JSON may be a list of strings, a list of {"prompt": ..., "style": ...} objects, or a mapping
    style -> list of prompts (the HPS v2 benchmark layout).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{key}: prompt file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{key}: {path} is not UTF-8 text (byte {e.start})") from None
    if path.suffix.lower() == ".json":
        prompts = _json_prompts(text, path, key)
    else:
        prompts = [Prompt(line.strip()) for line in text.splitlines()
                   if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise UserError(f"{key}: {path} holds no prompts")
    return prompts


def _json_prompts(text: str, path: Path, key: str) -> list[Prompt]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{key}: {path} is not valid JSON ({e.msg}, line {e.lineno})") from None
    prompts: list[Prompt] = []
    if isinstance(data, dict):
        for style, items in data.items():
            if not isinstance(items, list) or not all(isinstance(p, str) for p in items):
                raise UserError(f"{key}: {path}: style {style!r} must map to a list of prompt strings")
            prompts += [Prompt(p.strip(), str(style)) for p in items if p.strip()]
    elif isinstance(data, list):
        for n, item in enumerate(data):
            if isinstance(item, str):
                prompts.append(Prompt(item.strip()))
            elif isinstance(item, dict) and isinstance(item.get("prompt"), str):
                style = item.get("style")
                prompts.append(Prompt(item["prompt"].strip(), None if style is None else str(style)))
            else:
                raise UserError(f"{key}: {path}: item {n} must be a string or an object with a 'prompt' string")
    else:
        raise UserError(f"{key}: {path}: expected a JSON list or a mapping style -> prompts")
    return [p for p in prompts if p.text]
