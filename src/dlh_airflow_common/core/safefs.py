"""The runtime root's rules: everything in it is ours, nothing is reached through a link we did not make.

Another user of the host (or of a shared volume) must not be able to make us run their code (a
planted ``dbt_packages``), write or truncate their choice of file (a symlinked lock file) or remove
files outside the root (a symlink in a dir retention walks). So:

- the root and every dir we create in it are 0700 and owned by this uid (0770 with the group's
  setgid bit when the deployment declares a group-shared root, ``$DLH_DBT_RUNTIME_ROOT_GROUP=true``);
  a root or dir owned by another uid, or writable by others (or by the group, unless declared), is
  refused with a :class:`DbtRuntimeRootException` that says how to fix it;
- dirs are walked one component at a time with ``O_NOFOLLOW`` relative to their parent's fd, so a
  symlink anywhere on the way is refused, never followed;
- lock and state files are opened with ``O_NOFOLLOW``, never truncated on open, and must be regular
  files of ours with one link (a hard link to a victim's file is refused too);
- removal (:func:`remove_tree`) works on dir fds: it never descends into or through a symlink and
  only removes what lies under the root.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

from dlh_airflow_common.core.exceptions import DbtRuntimeRootException

GROUP_ENV = "DLH_DBT_RUNTIME_ROOT_GROUP"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def group_shared() -> bool:
    """Whether the deployment declared the root shared by a group (then dirs are 2770, files 0660)."""
    return os.environ.get(GROUP_ENV, "").strip().lower() in {"1", "true", "yes"}


def dir_mode() -> int:
    return 0o2770 if group_shared() else 0o700


def file_mode() -> int:
    return 0o660 if group_shared() else 0o600


def _fix_hint(path: str) -> str:
    return (f"remove it (or `chown $(id -u) {path} && chmod 700 {path}` if it is really yours), or point "
            "DLH_DBT_RUNTIME_ROOT at a dir of this user's; a root shared by a group on purpose needs "
            f"{GROUP_ENV}=true")


def _check(st: os.stat_result, path: str, what: str = "dir") -> None:
    """Refuse an entry another user owns or could change."""
    if st.st_uid != os.getuid() and not (group_shared() and _our_group(st.st_gid)):
        raise DbtRuntimeRootException(
            f"{what} {path} is owned by uid {st.st_uid}, not by this user (uid {os.getuid()}): whoever "
            f"owns it controls what dbt loads and what we write; {_fix_hint(path)}")
    writable_by = 0o002 if group_shared() else 0o022
    if stat.S_ISDIR(st.st_mode) and st.st_mode & writable_by:
        who = "others" if st.st_mode & 0o002 else "its group"
        raise DbtRuntimeRootException(
            f"{what} {path} is writable by {who} (mode {stat.S_IMODE(st.st_mode):o}): another user could "
            f"plant files in it; {_fix_hint(path)}")


def _our_group(gid: int) -> bool:
    return gid == os.getgid() or gid in os.getgroups()


def secure_root(root: Path) -> Path:
    """Create the runtime root (0700) or check that an existing one is ours; return its real path.

    A root that is ours but readable by others (made by an older version, or by ``mkdir -p`` of a dir
    below it) is narrowed to 0700 (to 2770's group bits when group-shared). A
    symlinked root is followed only when the link is this user's or root's (an admin's mount point).
    """
    root = Path(os.path.abspath(root))
    try:
        st = os.lstat(root)
    except FileNotFoundError:
        root.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(root, dir_mode())
            _group_mode(root)
        st = os.lstat(root)
    if stat.S_ISLNK(st.st_mode):
        if st.st_uid not in (0, os.getuid()):
            raise DbtRuntimeRootException(
                f"runtime root {root} is a symlink made by uid {st.st_uid}, not by this user: it would "
                f"send our files where that user chose; {_fix_hint(str(root))}")
        root = Path(os.path.realpath(root))
        st = os.lstat(root)
    if not stat.S_ISDIR(st.st_mode):
        raise DbtRuntimeRootException(f"runtime root {root} is not a directory; {_fix_hint(str(root))}")
    _check(st, str(root), "runtime root")
    readable = 0o007 if group_shared() else 0o077
    if st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) & readable:
        os.chmod(root, stat.S_IMODE(st.st_mode) & ~readable)  # ours, but others could read what runs leave
    return root


def _group_mode(path: Path | str, dir_fd: int | None = None) -> None:
    if group_shared():  # mkdir's mode passes through the umask; the group bits must be there
        os.chmod(path, 0o2770, dir_fd=dir_fd)  # noqa: S103  (declared: the group shares the root)


def _relative(root: Path, path: Path) -> tuple[str, ...]:
    """``path``'s parts below ``root`` (() for the root); refuses a path that is not lexically inside it."""
    rel = os.path.relpath(os.path.normpath(os.path.abspath(path)), os.path.abspath(root))
    parts = Path(rel).parts
    if rel == ".":
        return ()
    if parts[0] == ".." or os.path.isabs(rel):
        raise DbtRuntimeRootException(f"{path} is not inside the runtime root {root}; refusing to touch it")
    return parts


@contextlib.contextmanager
def _open_dirs(root: Path, parts: tuple[str, ...], create: bool) -> Iterator[int]:
    """An fd of ``root/parts...``, each component opened without following links and checked."""
    fd = os.open(root, _DIR_FLAGS)
    try:
        _check(os.fstat(fd), str(root), "runtime root")
        here = root
        for part in parts:
            here = here / part
            if create:
                try:
                    os.mkdir(part, dir_mode(), dir_fd=fd)
                    _group_mode(part, dir_fd=fd)
                except FileExistsError:
                    pass
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise DbtRuntimeRootException(
                        f"{here} under the runtime root is a symlink or not a directory: we never follow "
                        f"a link we did not make; {_fix_hint(str(here))}") from None
                raise
            os.close(fd)
            fd = child
            _check(os.fstat(fd), str(here))
        yield fd
    finally:
        os.close(fd)


def ensure_dir(root: Path, path: Path) -> Path:
    """Create ``path`` (and the dirs between) under ``root`` as ours, or check the existing ones."""
    with _open_dirs(root, _relative(root, path), create=True):
        return path


def check_inside(root: Path, path: Path) -> Path:
    """``path`` if it is lexically under ``root``, else a clear refusal (ids may hold ``..``)."""
    _relative(root, path)
    return path


def make_dir(root: Path, path: Path) -> Path:
    """Create a new dir ``path`` (its parents as :func:`ensure_dir`); FileExistsError if it exists."""
    parts = _relative(root, path)
    if not parts:
        raise FileExistsError(errno.EEXIST, "the runtime root itself", str(path))
    with _open_dirs(root, parts[:-1], create=True) as parent:
        os.mkdir(parts[-1], dir_mode(), dir_fd=parent)
        _group_mode(parts[-1], dir_fd=parent)
    return path


def open_state_file(path: Path, flags: int = os.O_RDWR) -> int:
    """Open (creating it) a lock or state file of ours: no link followed, nothing truncated."""
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, file_mode())
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DbtRuntimeRootException(
                f"{path} is a symlink: we never write through a link we did not make; remove it") from None
        raise
    st = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(st.st_mode):
        problem = "is not a regular file"
    elif st.st_uid != os.getuid() and not (group_shared() and _our_group(st.st_gid)):
        problem = f"is owned by uid {st.st_uid}, not by this user"
    elif st.st_nlink != 1:
        problem = f"has {st.st_nlink} hard links (it could be another file's name)"
    if problem:
        os.close(fd)
        raise DbtRuntimeRootException(f"{path} {problem}; remove it and run again")
    return fd


def touch(path: Path) -> None:
    """Create or re-stamp a flag file without following a link."""
    fd = open_state_file(path, os.O_WRONLY)
    try:
        os.utime(fd)
    finally:
        os.close(fd)


def remove_tree(root: Path, path: Path) -> bool:
    """Remove ``path`` (a dir tree, file or link) if it lies under ``root``; never through a link.

    Every component from the root down is opened with ``O_NOFOLLOW``: a symlink on the way means the
    path is not what it says, and nothing is removed. The last component is removed itself (a link is
    unlinked, not followed); a dir is removed with dir fds, so links inside are unlinked, never
    entered. Returns False when nothing was there to remove.
    """
    try:
        parts = _relative(root, path)
    except DbtRuntimeRootException:
        return False
    if not parts:
        return False  # never the root itself
    try:
        with _open_dirs(root, parts[:-1], create=False) as parent:
            st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(parts[-1], dir_fd=parent, ignore_errors=True)
            else:
                os.unlink(parts[-1], dir_fd=parent)
    except (OSError, DbtRuntimeRootException):
        return False
    return True


def is_plain_dir(path: Path) -> bool:
    """A real dir (not a link to one), for walks that must not leave the root."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False
