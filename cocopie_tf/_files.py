"""Writing the user's files without losing anything (one owner for every
file cocopie_tf writes: converted models, benchmark JSON, tuning results).

- The destination is checked before the (slow) work starts:
  :func:`check_destination` names the problem (missing or read-only folder,
  a directory or device node in the way, an existing file without
  ``replace``).
- :func:`write_file` writes a temporary file beside the destination and moves
  it into place, so a reader never sees half a file.  Without ``replace`` the
  move is a hard link, which fails if the name appeared meanwhile: a file
  created while we worked is never overwritten.  With ``replace`` an existing
  file keeps its permission bits; a new file gets the umask's.
- Temporary names carry the writer's PID; leftovers of a killed writer are
  removed by the next write to the same folder.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import secrets
import stat

_TMP = re.compile(r"^\.(?P<name>.+)\.cocopie-(?P<pid>\d+)-[0-9a-f]{8}\.tmp$")


def _umask() -> int:
    try:  # Linux >= 4.7: read it without changing it
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(folder: pathlib.Path) -> list[pathlib.Path]:
    """Deletes temporary files a killed cocopie_tf writer left in `folder`
    (their PID is gone); returns what was removed."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            m = _TMP.match(entry.name)
            if m and entry.is_file(follow_symlinks=False) and not pid_alive(int(m["pid"])):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    removed.append(pathlib.Path(entry.path))
    return removed


def check_destination(path, *, replace: bool) -> pathlib.Path:
    """The path a file will really be written to (a symlink's target), after
    checking it can be written; raises an OSError that names the problem."""
    path = pathlib.Path(path)
    if path.is_symlink():
        path = pathlib.Path(os.path.realpath(path))
    parent = path.parent
    if str(path) in ("", ".") or path.name in ("", ".", ".."):
        raise IsADirectoryError(f"{path}: is a directory, not a file name")
    if not parent.exists():
        raise FileNotFoundError(f"{path}: folder {parent} does not exist")
    if not parent.is_dir():
        raise NotADirectoryError(f"{path}: {parent} is not a folder")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(f"{path}: is a directory; give the file to write")
        if not stat.S_ISREG(st.st_mode):
            raise FileExistsError(f"{path}: exists and is not a regular file (a device, FIFO or "
                                  "socket); refusing to replace it")
        if not replace:
            raise FileExistsError(f"{path} exists; pass --force (force=True) to replace it")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"{path}: folder {parent} is not writable")
    return path


def write_file(path, data: bytes, *, replace: bool) -> pathlib.Path:
    """Writes `data` to `path` atomically (see the module docstring); returns
    the path written."""
    path = check_destination(path, replace=replace)
    remove_stale_temporaries(path.parent)
    tmp = path.parent / f".{path.name}.cocopie-{os.getpid()}-{secrets.token_hex(4)}.tmp"
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode) if replace and path.exists() else None
    except OSError:
        mode = None
    if mode is None:
        mode = 0o666 & ~_umask()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        if replace:
            os.replace(tmp, path)
        else:
            _link_exclusive(tmp, path, data, mode)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return path


def _link_exclusive(tmp: pathlib.Path, path: pathlib.Path, data: bytes, mode: int) -> None:
    try:
        os.link(tmp, path)  # FileExistsError if the name appeared meanwhile
        return
    except FileExistsError:
        raise FileExistsError(f"{path} appeared while writing; not replacing it "
                              "(pass --force to replace it)") from None
    except OSError:
        pass  # no hard links here (some network and FAT file systems)
    # Still exclusive, though not atomic for readers.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise FileExistsError(f"{path} appeared while writing; not replacing it "
                              "(pass --force to replace it)") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
