"""One owner per workdir: an exclusive lock held for as long as a run uses the directory.

``<workdir>/.lock`` is locked with ``fcntl.flock``: the kernel releases the lock when the
holding process ends, however it ends (``kill -9`` included), so a dead run never blocks the
next one. The file also records who holds it (pid, host, boot id, the process's start time,
when the lock was taken and a random job token), for two reasons: a refused start can say
which process to wait for or stop, and a holder that is provably gone (same host and boot, pid
no longer running or now another process) is taken over even where ``flock`` is still held by
an orphaned child or is not supported by the filesystem. ``break_lock=True`` takes the lock
over in every case, for a holder on a host that was lost.

A multi-process job shares one workdir: :func:`acquire_for_job` has process 0 take the lock and
broadcast its token; every other process checks that the file names that token, so a process
started with the wrong ``--workdir`` or next to a foreign run stops at once.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

log = logging.getLogger("nlnoise")

LOCK_NAME = ".lock"
# flock may be unsupported on some network filesystems; the holder record alone then decides.
_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS)
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class LockError(RuntimeError):
    """The workdir cannot be owned by this run; the message says why and what to do."""


class WorkdirBusyError(LockError):
    """Another live process owns the workdir; the message names it (pid, host, start)."""


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _proc_start(pid: int) -> str:
    """The process's start time in clock ticks since boot ('' where /proc is missing): with
    the pid it names one process, even after the pid is reused."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # The command name (field 2) may hold spaces; the fields after its ')' are fixed.
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def holder_gone(holder: dict[str, Any]) -> bool:
    """True when ``holder`` (a lock record) is provably not running: it was on this host in
    this boot and its pid has ended or now belongs to another process. A holder on another host
    is never judged gone from here."""
    if holder.get("host") != socket.gethostname() or holder.get("boot_id") != _boot_id():
        return False
    pid = int(holder.get("pid", -1))
    if pid <= 0 or not _pid_alive(pid):
        return True
    recorded = holder.get("proc_start", "")
    return bool(recorded) and _proc_start(pid) not in ("", recorded)


def describe(holder: dict[str, Any] | None) -> str:
    """``pid 123 on host h (started 2026-12-01 05:30:00)`` for messages."""
    if not holder:
        return "a process that left no record"
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("locked_at", 0)))
    job = f", job {holder['job']}" if holder.get("job") else ""
    return f"pid {holder.get('pid')} on host {holder.get('host')} (since {when}{job})"


def read_holder(workdir: str, name: str = LOCK_NAME) -> dict[str, Any] | None:
    """The lock record of ``workdir`` (its file ``name``), or None when there is none (or it
    is unreadable)."""
    try:
        with open(os.path.join(workdir, name)) as f:
            return json.loads(f.read() or "null")
    except (OSError, ValueError):
        return None


def busy_holder(workdir: str) -> dict[str, Any] | None:
    """The record of the live process that holds ``workdir``'s lock, or None when it is free.
    Changes nothing (for a sweep checking its cells before it starts)."""
    path = os.path.join(os.path.abspath(workdir), LOCK_NAME)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = False
        except BlockingIOError:
            held = True
        except OSError:  # no flock here: the record decides
            held = True
        holder = read_holder(os.path.dirname(path))
        if not held or holder_gone(holder or {}):
            return None
        return holder or {}
    finally:
        os.close(fd)


class WorkdirLock:
    """The exclusive lock on one workdir. ``acquire`` creates the directory if needed;
    ``release`` removes the lock file, and the directory too when this lock created it and
    nothing else was written (a refused run leaves nothing behind). ``name``: the lock file's
    name in ``workdir`` (another name locks something else that lives there, such as an
    output directory that is replaced as a whole and so cannot hold its own lock)."""

    def __init__(self, workdir: str, name: str = LOCK_NAME):
        self.workdir = os.path.abspath(workdir)
        self.path = os.path.join(self.workdir, name)
        self.token = ""
        self._fd: int | None = None
        self._created_dir = False

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, *, job: str = "", break_lock: bool = False) -> None:
        """Takes the lock or raises :class:`WorkdirBusyError` naming the holder.

        A holder that is provably gone (see :func:`holder_gone`) is replaced with a warning;
        ``break_lock`` replaces any holder. Raises ``OSError`` when the directory cannot be
        made or written (``NotADirectoryError`` when the path is a file).
        """
        if self._fd is not None:
            return
        self._make_dir()
        for _ in range(5):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                locked = True
            except BlockingIOError:
                locked = False
            except OSError as e:
                if e.errno not in _NO_FLOCK:
                    os.close(fd)
                    raise
                locked = None  # no flock here: the record decides
            holder = self._record(fd)
            if locked is False or (locked is None and holder):
                if not (break_lock or self._stale(fd, holder)):
                    os.close(fd)
                    raise WorkdirBusyError(self._busy_message(holder))
                log.warning("workdir %s: taking over the lock of %s (%s).", self.workdir,
                            describe(holder), "--break_lock" if break_lock else
                            "no longer running")
                os.close(fd)
                self._unlink_quietly()
                continue
            self.token = self.token or uuid.uuid4().hex
            self._fd = fd
            try:
                self._write(job)
            except BaseException:  # e.g. a full disk: leave no half-made lock behind
                self.release()
                raise
            # Checked after writing: a starter that replaced a stale file meanwhile wins, and
            # this one tries again (and then finds that starter's record).
            if self._same_file(fd):
                return
            self._fd = None
            os.close(fd)
        raise WorkdirBusyError(f"workdir {self.workdir}: the lock {self.path} kept changing "
                               "hands; another run is starting there. Try again.")

    def release(self) -> None:
        """Drops the lock (idempotent): removes the lock file, then closes it."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        if self._same_file(fd):
            self._unlink_quietly()
        os.close(fd)
        if self._created_dir:
            try:
                os.rmdir(self.workdir)  # only if empty: a refused run leaves no directory
            except OSError:
                pass

    def __enter__(self) -> WorkdirLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    # -- helpers ------------------------------------------------------------------------------

    def _make_dir(self) -> None:
        if os.path.exists(self.workdir) and not os.path.isdir(self.workdir):
            raise NotADirectoryError(errno.ENOTDIR, "a file, not a directory", self.workdir)
        if not os.path.isdir(self.workdir):
            os.makedirs(self.workdir)
            self._created_dir = True

    def _stale(self, fd: int, holder: dict[str, Any] | None) -> bool:
        """The holder is gone, and stays so for a moment: a process that has just taken a
        lock over a dead run's record writes its own within microseconds."""
        if not holder or not holder_gone(holder):
            return False
        time.sleep(0.2)
        again = self._record(fd)
        return again == holder and self._same_file(fd)

    def _busy_message(self, holder: dict[str, Any] | None) -> str:
        return (f"workdir {self.workdir} is in use by {describe(holder)}: one run at a time "
                "owns a workdir. Wait for it to finish or stop it, or use another --workdir; "
                "if that process is gone (its host was lost), pass --break_lock.")

    def _record(self, fd: int) -> dict[str, Any] | None:
        try:
            text = os.pread(fd, 1 << 16, 0).decode()
            return json.loads(text) if text.strip() else None
        except (OSError, ValueError):
            return None

    def _write(self, job: str) -> None:
        record = {"pid": os.getpid(), "host": socket.gethostname(), "boot_id": _boot_id(),
                  "proc_start": _proc_start(os.getpid()), "locked_at": time.time(),
                  "job": job, "token": self.token}
        data = json.dumps(record).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def _same_file(self, fd: int) -> bool:
        try:
            a, b = os.fstat(fd), os.stat(self.path)
        except FileNotFoundError:
            return False
        return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)

    def _unlink_quietly(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def acquire_for_job(workdir: str, *, process_index: int, process_count: int,
                    broadcast: Callable[[str], str] | None = None, job: str = "",
                    break_lock: bool = False) -> WorkdirLock:
    """Makes the workdir this job's: process 0 takes the lock; the others check it is theirs.

    ``broadcast(text)`` sends process 0's text to every process (a collective all processes
    call; None for one process). Every process raises :class:`WorkdirBusyError` when the lock
    is not its job's. Returns the lock (held by process 0 only); release it when done.
    """
    lock = WorkdirLock(workdir)
    if process_count == 1:
        lock.acquire(job=job, break_lock=break_lock)
        return lock
    error: Exception | None = None
    if process_index == 0:
        try:
            lock.acquire(job=job, break_lock=break_lock)
        except (WorkdirBusyError, OSError) as e:
            error = e
    token = broadcast(lock.token if error is None else "") if broadcast else lock.token
    if error is not None:
        raise error
    if not token:
        raise WorkdirBusyError(f"workdir {lock.workdir}: process 0 of this job could not take "
                               "its lock; its error says why.")
    if process_index != 0:
        holder = read_holder(lock.workdir)
        if not holder or holder.get("token") != token:
            raise WorkdirBusyError(
                f"workdir {lock.workdir} is locked by {describe(holder)}, not by process 0 of "
                f"this job: every process of a job must see the same workdir (a shared "
                "filesystem) and no other run may use it.")
    return lock


def own_workdir(workdir: str, *, break_lock: bool = False) -> WorkdirLock:
    """:func:`acquire_for_job` for this jax process (one of ``jax.process_count()``), with
    one-line errors: :class:`WorkdirBusyError` naming the holder, :class:`LockError` for a
    path that is a file or a directory that cannot be made or written."""
    import jax
    import numpy as np

    def broadcast(text: str) -> str:
        from jax.experimental import multihost_utils

        buf = np.zeros(64, np.uint8)
        raw = text.encode()[:64]
        buf[: len(raw)] = np.frombuffer(raw, np.uint8)
        out = np.asarray(multihost_utils.broadcast_one_to_all(buf), np.uint8)
        return bytes(out).rstrip(b"\0").decode()

    count = jax.process_count()
    path = os.path.abspath(workdir)
    try:
        return acquire_for_job(
            path, process_index=jax.process_index(), process_count=count, broadcast=broadcast,
            break_lock=break_lock,
            job=f"{os.environ.get('NLNOISE_COORDINATOR', '?')} x{count}" if count > 1 else "")
    except OSError as e:
        if os.path.exists(path) and not os.path.isdir(path):
            raise LockError(f"--workdir {path} is a file, not a directory; give a directory "
                            "(it is created if missing).") from None
        where = e.filename or path
        fix = ("free disk space and run the same command again" if e.errno in _DISK_FULL
               else "fix its permissions or use another --workdir")
        raise LockError(f"--workdir {path} cannot be created or written ({where}: "
                        f"{e.strerror or e}); {fix}.") from None
