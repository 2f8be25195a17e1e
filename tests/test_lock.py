"""nlnoise.lock: one owner per workdir, stale holders, --break_lock, multi-process jobs."""

import fcntl
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from nlnoise import lock

HOLD = """
import sys, time
from nlnoise import lock
held = lock.WorkdirLock(sys.argv[1])
held.acquire(job="test")
print("held", flush=True)
time.sleep(120)
"""


def _holder_process(workdir):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(workdir)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_owner_is_refused_naming_the_holder_and_release_leaves_nothing(tmp_path):
    d = tmp_path / "w"
    first = lock.WorkdirLock(str(d))
    first.acquire(job="A")
    record = json.loads((d / lock.LOCK_NAME).read_text())
    assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
    with pytest.raises(lock.WorkdirBusyError,
                       match=rf"in use by pid {os.getpid()} on host .*job A.*--break_lock"):
        lock.WorkdirLock(str(d)).acquire()
    assert lock.busy_holder(str(d))["pid"] == os.getpid()
    first.release()
    assert lock.busy_holder(str(d)) is None
    assert not d.exists()  # the lock made the directory and nothing else was written


def test_a_killed_holder_never_blocks(tmp_path):
    proc = _holder_process(tmp_path)
    with pytest.raises(lock.WorkdirBusyError, match=f"pid {proc.pid}"):
        lock.WorkdirLock(str(tmp_path)).acquire()
    proc.kill()  # SIGKILL: no cleanup ran, the lock file stays
    proc.wait()
    assert (tmp_path / lock.LOCK_NAME).exists()
    taken = lock.WorkdirLock(str(tmp_path))
    taken.acquire()
    assert lock.read_holder(str(tmp_path))["pid"] == os.getpid()
    taken.release()
    assert tmp_path.exists()  # not made by the lock: kept


def _foreign_flock(path, record):
    """Holds ``path``'s flock on another open file (like an orphaned child would)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, json.dumps(record).encode())
    return fd


def test_dead_holder_on_this_host_is_taken_over_even_if_its_flock_lives_on(tmp_path, caplog):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    fd = _foreign_flock(tmp_path / lock.LOCK_NAME, {
        "pid": int(gone), "host": socket.gethostname(), "boot_id": lock._boot_id(),
        "locked_at": time.time()})
    try:
        with caplog.at_level("WARNING", logger="nlnoise"):
            taken = lock.WorkdirLock(str(tmp_path))
            taken.acquire()
        assert "no longer running" in caplog.text and taken.held
        taken.release()
    finally:
        os.close(fd)


def test_holder_on_another_host_needs_break_lock(tmp_path):
    fd = _foreign_flock(tmp_path / lock.LOCK_NAME, {
        "pid": 1, "host": "elsewhere", "boot_id": "x", "locked_at": time.time()})
    try:
        with pytest.raises(lock.WorkdirBusyError, match="pid 1 on host elsewhere"):
            lock.WorkdirLock(str(tmp_path)).acquire()
        taken = lock.WorkdirLock(str(tmp_path))
        taken.acquire(break_lock=True)
        assert lock.read_holder(str(tmp_path))["pid"] == os.getpid()
        taken.release()
    finally:
        os.close(fd)


def test_a_job_shares_process_0s_lock_and_refuses_a_foreign_one(tmp_path):
    sent = {}

    def broadcast(text):  # process 0's text reaches every process
        sent.setdefault("token", text)
        return sent["token"]

    zero = lock.acquire_for_job(str(tmp_path), process_index=0, process_count=2,
                                broadcast=broadcast)
    assert zero.held and sent["token"] == zero.token
    other = lock.acquire_for_job(str(tmp_path), process_index=1, process_count=2,
                                 broadcast=broadcast)
    assert not other.held  # only process 0 holds it
    with pytest.raises(lock.WorkdirBusyError, match="not by process 0 of this job"):
        lock.acquire_for_job(str(tmp_path), process_index=1, process_count=2,
                             broadcast=lambda text: "another-job-token")
    zero.release()
    # Process 0 refused: every process of the job stops too.
    proc = _holder_process(tmp_path)
    try:
        with pytest.raises(lock.WorkdirBusyError, match="process 0 of this job could not"):
            lock.acquire_for_job(str(tmp_path), process_index=1, process_count=2,
                                 broadcast=lambda text: "")
    finally:
        proc.kill()
        proc.wait()


def test_a_path_that_is_a_file_or_unwritable_is_named(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(lock.LockError, match="is a file, not a directory"):
        lock.own_workdir(str(tmp_path / "f"))
    with pytest.raises(lock.LockError, match=r"f/w cannot be created or written"):
        lock.own_workdir(str(tmp_path / "f" / "w"))
