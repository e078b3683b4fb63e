"""Where ``save_memory`` / ``load_memory`` may touch the file system. No rclpy import.

Any process on the DDS domain can call these services, so a request's path is untrusted:

- Everything stays inside ONE folder, ``memory.save_dir`` (operator configuration, so ``~`` and
  environment variables in it are expanded); empty: ``$XDG_DATA_HOME/mirage_ros/memories``
  (``~/.local/share/mirage_ros/memories``), created with mode 0700 on first use.
- A requested path is a name (or ``sub/name``) relative to that folder, or an absolute path inside
  it. Refused, with the reason: ``..`` components, a leading ``~`` (never expanded), NUL bytes,
  absolute paths outside the folder, any path whose real location (symlinks resolved) leaves it,
  names not ending in ``.safetensors``.
- Saving never replaces an existing file unless ``overwrite`` is set, never a directory or a
  symlink or anything that is not a regular file; an empty path gets a unique name
  (``memory_<UTC time to microseconds>_<random>.safetensors``).
- Writes go to a hidden temporary file in the same folder, then one rename (``os.replace`` when
  overwriting, otherwise a hard link that fails if the name appeared meanwhile); a failure leaves
  nothing behind. Replies carry absolute paths.
"""
from __future__ import annotations

import datetime as _dt
import os
import stat
import uuid
from pathlib import Path
from typing import Callable

__all__ = ["PathError", "SUFFIX", "memory_dir", "resolve_save", "resolve_load", "unique_name", "write_atomic"]

SUFFIX = ".safetensors"


class PathError(ValueError):
    """A requested path is refused; the message says why. Nothing was touched."""


def memory_dir(configured: str = "", create: bool = True, namespace: str = "") -> Path:
    """The folder saves and loads are confined to (absolute, symlinks resolved). Empty
    ``configured``: the default folder, per ROS namespace (``memories/robot1`` for ``/robot1``: robots
    never read or replace each other's maps); ``{namespace}`` in ``configured`` is replaced the same
    way (``/robot1`` -> ``robot1``, the root namespace -> nothing)."""
    ns = "/".join(t for t in str(namespace).split("/") if t)
    if any(t in (".", "..") for t in ns.split("/")):
        raise PathError(f"namespace: {namespace!r} is not a ROS namespace")
    if configured:
        base = Path(os.path.expandvars(os.path.expanduser(configured.replace("{namespace}", ns))))
    else:
        data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
        base = Path(data) / "mirage_ros" / "memories"
        if ns:
            base = base / ns
    base = Path(os.path.abspath(base))
    if create and not base.exists():
        try:
            base.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise PathError(f"memory.save_dir: cannot create {base} ({exc.strerror or exc})") from None
    if base.exists() and not base.is_dir():
        raise PathError(f"memory.save_dir: {base} is not a folder")
    return Path(os.path.realpath(base))


def unique_name() -> str:
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"memory_{now}_{uuid.uuid4().hex[:8]}{SUFFIX}"


def _inside(path: Path, base: Path) -> bool:
    return path == base or base in path.parents


def _candidate(base: Path, requested: str) -> Path:
    """``requested`` checked lexically and joined to ``base`` (not yet resolved)."""
    if "\x00" in requested:
        raise PathError("path: contains a NUL byte")
    if requested.startswith("~"):
        raise PathError(f"path: {requested!r} starts with '~', which is not expanded; give a name relative to "
                        f"memory.save_dir ({base})")
    p = Path(requested)
    if ".." in p.parts:
        raise PathError(f"path: {requested!r} contains '..'; give a name inside memory.save_dir ({base})")
    if p.is_absolute():
        q = Path(os.path.normpath(p))
        # compare against both the configured spelling and the resolved folder
        if not _inside(q, base) and not _inside(Path(os.path.realpath(q.parent)), base):
            raise PathError(f"path: {requested!r} is outside memory.save_dir ({base})")
        return q
    return base / p


def _check_real(base: Path, p: Path, requested: str) -> Path:
    """The real parent folder of ``p`` must exist and lie inside ``base``."""
    parent = Path(os.path.realpath(p.parent))
    if not _inside(parent, base):
        raise PathError(f"path: {requested!r} leads outside memory.save_dir ({base}) through a symlink")
    if not parent.is_dir():
        raise PathError(f"path: folder {parent} does not exist inside memory.save_dir ({base})")
    return parent / p.name


def resolve_save(base: Path, requested: str = "", overwrite: bool = False) -> Path:
    """Absolute path a save may write (see the module docstring), or ``PathError``."""
    if not requested:
        return base / unique_name()
    p = _check_real(base, _candidate(base, requested), requested)
    if not p.name.endswith(SUFFIX) or p.name == SUFFIX:
        raise PathError(f"path: {requested!r}: a memory file name ends in {SUFFIX}")
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return p
    if stat.S_ISLNK(st.st_mode):
        raise PathError(f"path: {p} is a symlink; refusing to write through or over it")
    if stat.S_ISDIR(st.st_mode):
        raise PathError(f"path: {p} is a folder")
    if not stat.S_ISREG(st.st_mode):
        raise PathError(f"path: {p} exists and is not a regular file")
    if not overwrite:
        raise PathError(f"path: {p} exists (set overwrite to replace it)")
    return p


def resolve_load(base: Path, requested: str) -> Path:
    """Absolute path of an existing regular memory file inside ``base``, or ``PathError``."""
    if not requested:
        raise PathError("path: empty")
    p = _check_real(base, _candidate(base, requested), requested)
    real = Path(os.path.realpath(p))
    if not _inside(real, base):
        raise PathError(f"path: {requested!r} leads outside memory.save_dir ({base}) through a symlink")
    if not real.exists():
        raise PathError(f"path: {p} does not exist")
    if real.is_dir():
        raise PathError(f"path: {p} is a folder, not a memory file")
    if not real.is_file():
        raise PathError(f"path: {p} is not a regular file")
    return real


def write_atomic(target: Path, write: Callable[[Path], None], overwrite: bool = False) -> Path:
    """Call ``write(tmp)`` for a hidden temporary file next to ``target``, then put it in place in
    one step; on any failure remove what was written and re-raise. Returns ``target``."""
    target = Path(target)
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex[:12]}.tmp"
    leftovers = [tmp, tmp.with_name(tmp.name + ".tmp")]  # writers that themselves write <name>.tmp first
    try:
        write(tmp)
        if overwrite:
            os.replace(tmp, target)
        else:
            try:
                os.link(tmp, target)  # fails if the name appeared meanwhile: never clobbers
            except FileExistsError:
                raise PathError(f"path: {target} exists (set overwrite to replace it)") from None
            except OSError:  # a file system without hard links: reserve the name, then replace it
                fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
                os.close(fd)
                os.replace(tmp, target)
    finally:
        for f in leftovers:
            try:
                os.unlink(f)
            except FileNotFoundError:
                pass
            except OSError:  # pragma: no cover - nothing more to do
                pass
    return target

