"""Files and directories in places other users may write (a shared ``run_dir``, ``history_path`` in /tmp).

Every file and directory rockstar-mp creates or opens there goes through this module:

* a new file is created with ``O_CREAT|O_EXCL|O_NOFOLLOW`` (mode 0600), so nothing planted at its name
  (a symbolic link, a file of another user) is ever opened in its place;
* an existing file is opened with ``O_NOFOLLOW`` and kept only if it is a regular file of ours with one
  link (a hard link could point anywhere);
* a directory is created 0700, or an existing one kept only if it is ours, not a symbolic link and not
  writable by group or others;
* a file is replaced atomically through a new random-named file beside it and ``os.replace``.

A refusal raises ``UnsafePath`` (a ``PermissionError``) saying why and what to do.

The run directory (``effective_run_dir``): a configured ``run_dir`` that is ours and private is used as is;
otherwise (world-writable like /tmp, or another user's) everything goes to ``<run_dir>/rockstar-mp-<uid>``
(0700), or, if another user took that name first, to a new ``mkdtemp`` beside it. A master that was
SIGKILLed leaves its aggregator config (it holds the tokens) and its temporary run dir behind; the next
master removes them (``remove_dead_masters_leftovers``).
"""
from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import stat
import tempfile
from typing import Literal, NamedTuple, overload

from .errors import UnsafePath

log = logging.getLogger("rockstar_mp.safefs")

FILE_MODE = 0o600
DIR_MODE = 0o700
TEMP_PREFIX = "rockstar-mp-"  # temporary run dirs: rockstar-mp-<master pid>-<random>
TEMP_RUN_DIR = re.compile(r"rockstar-mp-(\d+)-[^/]+")
# The aggregator's config (master/manager.py: aggregator-<master pid>-<segment>.json) and the temporary
# files write_atomic makes for it.
AGGREGATOR_CONFIG = re.compile(r"aggregator-(\d+)-.+\.json(\.[0-9a-f]+\.tmp)?")
_ADVICE = "remove it, or point run_dir (history_path) at a directory that only this user can write"


def _refusal(path: str, why: str) -> UnsafePath:
    return UnsafePath(f"{path} {why}: refusing to use it; {_ADVICE}")


def _check_file(path: str, info: os.stat_result) -> None:
    if stat.S_ISLNK(info.st_mode):
        raise _refusal(path, "is a symbolic link")
    if not stat.S_ISREG(info.st_mode):
        raise _refusal(path, "is not a regular file")
    if info.st_uid != os.geteuid():
        raise _refusal(path, f"belongs to uid {info.st_uid}, not to us (uid {os.geteuid()})")
    if info.st_nlink != 1:
        raise _refusal(path, f"has {info.st_nlink} hard links")


def _check_dir(path: str, info: os.stat_result) -> None:
    if not stat.S_ISDIR(info.st_mode):
        raise _refusal(path, "is not a directory")
    if info.st_uid != os.geteuid():
        raise _refusal(path, f"belongs to uid {info.st_uid}, not to us (uid {os.geteuid()})")
    if info.st_mode & 0o022:
        raise _refusal(path, f"is writable by group or others (mode {stat.S_IMODE(info.st_mode):o})")


# -- files -----------------------------------------------------------------------------------------
def create_file(path: str) -> int:
    """A new file (``FileExistsError`` if the name is taken, even by a dangling link); read-write fd."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    try:
        _check_file(path, os.fstat(fd))  # e.g. a filesystem that gives new files another owner
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_own_file(path: str) -> int:
    """An existing regular file of ours (made 0600 if it was more open); read-write fd."""
    try:  # O_NONBLOCK: a FIFO planted at the name must not hang us before fstat tells what it is
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise
    except OSError:
        _check_file(path, os.lstat(path))  # ELOOP: a symlink, EISDIR: a directory... say which
        raise
    try:
        info = os.fstat(fd)
        _check_file(path, info)
        if stat.S_IMODE(info.st_mode) & ~FILE_MODE:
            os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def claim_file(path: str) -> tuple[int, bool]:
    """``(fd, created)``: a new private file at ``path``, or the existing one if it is ours."""
    for _ in range(3):  # the file may vanish between the two tries
        try:
            return create_file(path), True
        except FileExistsError:
            pass
        try:
            return open_own_file(path), False
        except FileNotFoundError:
            continue
    raise _refusal(path, "keeps appearing and disappearing")


def check_own_file(path: str) -> bool:
    """Is there a file of ours at ``path`` (False: nothing there)? ``UnsafePath`` if something else is."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    _check_file(path, info)
    return True


def remove_own_file(path: str) -> bool:
    """Unlink ``path`` if it is a file of ours; anything else there is left alone. True if removed."""
    try:
        if check_own_file(path):
            os.unlink(path)
            return True
    except OSError:  # not ours, or gone meanwhile
        pass
    return False


def write_atomic(path: str, data: bytes) -> None:
    """Replace ``path`` with a private file holding ``data``: readers see the old or the new whole file,
    and nothing planted beside it is written through (the temporary name is new and random)."""
    while True:
        temporary = f"{path}.{secrets.token_hex(8)}.tmp"
        try:
            fd = create_file(temporary)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(temporary, path)
    except BaseException:
        remove_own_file(temporary)
        raise


# -- directories -----------------------------------------------------------------------------------
def check_private_dir(path: str) -> None:
    """``UnsafePath`` unless ``path`` is a directory of ours, not a symlink, not group/other-writable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        info = os.lstat(path)  # FileNotFoundError, or say what is there
        raise _refusal(path, "is a symbolic link" if stat.S_ISLNK(info.st_mode) else "is not a directory") \
            from None
    try:
        _check_dir(path, os.fstat(fd))
    finally:
        os.close(fd)


def is_private_dir(path: str) -> bool:
    try:
        check_private_dir(path)
        return True
    except OSError:
        return False


def private_dir(path: str) -> str:
    """A directory of ours at ``path``: created 0700, or the existing one if it is ours and private."""
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        pass
    check_private_dir(path)
    return path


def new_temp_run_dir(parent: str) -> str:
    """A new private ``rockstar-mp-<our pid>-<random>`` in ``parent`` (the pid tells the sweep its owner)."""
    path = tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-", dir=parent)
    check_private_dir(path)
    return path


def is_temp_run_dir(path: str) -> bool:
    return TEMP_RUN_DIR.fullmatch(os.path.basename(path.rstrip("/"))) is not None


class RunDir(NamedTuple):
    path: str
    temporary: bool  # a mkdtemp: removed by the last master at a clean exit


@overload
def effective_run_dir(configured: str, create: Literal[True] = True) -> RunDir: ...
@overload
def effective_run_dir(configured: str, create: bool) -> RunDir | None: ...
def effective_run_dir(configured: str, create: bool = True) -> RunDir | None:
    """Where our files go for the configured ``run_dir`` (see the module doc). With ``create=False``
    nothing is created: the directory a master would have made, or None."""
    configured = os.path.abspath(configured)
    if create:
        os.makedirs(configured, mode=DIR_MODE, exist_ok=True)
    try:
        info = os.stat(configured)  # a symlinked run_dir is fine if it leads to a private directory of ours
    except OSError:
        if create:
            raise
        return None
    if stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid() and not info.st_mode & 0o022:
        return RunDir(configured, False)
    subdirectory = os.path.join(configured, f"{TEMP_PREFIX}{os.geteuid()}")
    if not create:
        return RunDir(subdirectory, False) if is_private_dir(subdirectory) else None
    try:
        private_dir(subdirectory)
    except OSError as exc:
        temporary = new_temp_run_dir(configured)
        log.warning("rockstar-mp: run_dir %s is not private to this user and %s; using %s instead",
                    configured, exc, temporary)
        return RunDir(temporary, True)
    log.info("rockstar-mp: run_dir %s is not private to this user: its files go to %s", configured,
             subdirectory)
    return RunDir(subdirectory, False)


# -- leftovers of masters that died -----------------------------------------------------------------
def pid_alive(pid: int) -> bool:
    """Is ``pid`` a running process (a zombie counts as dead)? Unsure counts as alive."""
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] != b"Z"
    except FileNotFoundError:
        return False
    except (OSError, IndexError):
        return True


def _live_config_in(directory: str) -> bool:
    try:
        names = os.listdir(directory)
    except OSError:
        return True
    return any((m := AGGREGATOR_CONFIG.fullmatch(n)) and pid_alive(int(m.group(1))) for n in names)


def remove_dead_masters_configs(directory: str) -> list[str]:
    """Unlink the aggregator configs (tokens inside) of dead masters in ``directory``: files of ours only."""
    removed: list[str] = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        match = AGGREGATOR_CONFIG.fullmatch(name)
        path = os.path.join(directory, name)
        if match and not pid_alive(int(match.group(1))) and remove_own_file(path):
            removed.append(path)
    return removed


def remove_dead_masters_temp_dirs(parent: str, keep: str | None = None) -> list[str]:
    """Remove the temporary run dirs in ``parent`` of ours whose master (named in the directory) and
    every master with a config inside (one re-executed by USR2 inherits the directory) are dead."""
    removed: list[str] = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    for name in names:
        match = TEMP_RUN_DIR.fullmatch(name)
        path = os.path.join(parent, name)
        if (not match or path == keep or pid_alive(int(match.group(1))) or not is_private_dir(path)
                or _live_config_in(path)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def remove_dead_masters_leftovers(run_dir: str, parents: list[str]) -> None:
    """At a master's start: dead masters' configs in ``run_dir`` and each of ``parents``, and their
    temporary run dirs in ``parents``; one log line each."""
    for directory in dict.fromkeys([run_dir, *parents]):
        for path in remove_dead_masters_configs(directory):
            log.info("rockstar-mp: removed %s, left by a master that died", path)
    for parent in dict.fromkeys(parents):
        for path in remove_dead_masters_temp_dirs(parent, keep=run_dir):
            log.info("rockstar-mp: removed the run directory %s, left by a master that died", path)
