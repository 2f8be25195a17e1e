"""RunDir: metrics log trimming on resume, config identity, archiving."""

import json
import sys
from pathlib import Path

import pytest

from nlnoise import workdir

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_config import load

IGNORE = ("progress_bar", "mesh", "num_epochs", "max_steps")


def test_metrics_log_truncate_and_torn_line(tmp_path):
    log = workdir.MetricsLog(str(tmp_path / "metrics.jsonl"))
    for s in (10, 20, 30):
        log.append({"step": s, "x": s / 10})
    with open(log.path, "a") as f:
        f.write('{"step": 40, "x"')  # a write cut short by SIGKILL
    assert [r["step"] for r in log.read()] == [10, 20, 30]
    assert [r["step"] for r in log.truncate_after(20)] == [10, 20]
    assert [r["step"] for r in log.read()] == [10, 20]
    assert Path(log.path).read_text().endswith("\n")


def test_config_identity(tmp_path):
    run = workdir.RunDir(str(tmp_path))
    cfg = load("digits")
    assert run.check_config(cfg, IGNORE) is None  # empty workdir
    run.start(cfg, dataset_fingerprint="abc")
    saved = json.load(open(tmp_path / "config.json"))
    assert saved["config"]["corruption"]["level"] == 0.5 and saved["dataset_fingerprint"] == "abc"
    longer = load("digits", "epochs=50")
    assert run.check_config(longer, IGNORE) is None  # extending a run is allowed
    with pytest.raises(workdir.WorkdirError, match=r"corruption\.kind.*--overwrite"):
        run.check_config(load("digits", "kind='symmetric'"), IGNORE)
    with pytest.raises(workdir.WorkdirError, match="training labels differ"):
        run.start(cfg, dataset_fingerprint="xyz")


def test_a_key_the_saved_run_lacks_is_a_different_run(tmp_path):
    run = workdir.RunDir(str(tmp_path))
    cfg = load("digits")
    run.start(cfg, dataset_fingerprint="abc")
    saved = json.load(open(tmp_path / "config.json"))
    del saved["config"]["q"]["grad_clip"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(workdir.WorkdirError, match=r"q\.grad_clip: '<missing>' -> 10\.0"):
        run.check_config(cfg, IGNORE)


def test_finished_run_is_recognised_and_overwrite_archives(tmp_path):
    run = workdir.RunDir(str(tmp_path))
    cfg = load("digits")
    run.start(cfg, dataset_fingerprint="f")
    (tmp_path / "summary.json").write_text(json.dumps({"done": True}))
    assert run.check_config(cfg, IGNORE) == {"done": True}
    other = load("digits", "seed=4")
    assert run.check_config(other, IGNORE, overwrite=True) is None
    archived = list((tmp_path / "archive").iterdir())
    assert len(archived) == 1
    assert (archived[0] / "summary.json").exists() and not (tmp_path / "summary.json").exists()


def test_empty_path_is_refused():
    for bad in ("", "  "):
        with pytest.raises(workdir.WorkdirError, match="--workdir: empty"):
            workdir.RunDir(bad)


@pytest.mark.parametrize("damaged", ["config.json", "summary.json"])
def test_damaged_run_files_are_refused_by_name_and_overwrite_gets_past(tmp_path, damaged):
    run = workdir.RunDir(str(tmp_path))
    cfg = load("digits")
    run.start(cfg, dataset_fingerprint="f")
    (tmp_path / "summary.json").write_text(json.dumps({"done": True}))
    (tmp_path / damaged).write_text('{"config": {"seed": ')  # cut short
    with pytest.raises(workdir.WorkdirError, match=rf"{damaged} is damaged.*--overwrite"):
        run.check_config(cfg, IGNORE)
    assert run.check_config(cfg, IGNORE, overwrite=True) is None
    (archived,) = (tmp_path / "archive").iterdir()
    assert (archived / damaged).exists() and not (tmp_path / damaged).exists()


def test_run_files_without_config_or_foreign_files_are_refused(tmp_path):
    cfg = load("digits")
    (tmp_path / "checkpoints" / "22").mkdir(parents=True)
    (tmp_path / "metrics.jsonl").write_text('{"step": 22}\n')
    run = workdir.RunDir(str(tmp_path))
    with pytest.raises(workdir.WorkdirError, match=r"checkpoints, metrics.jsonl but no "
                       r"config.json.*Restore its config.json, or pass --overwrite"):
        run.check_config(cfg, IGNORE)
    other = tmp_path / "home"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(workdir.WorkdirError, match=r"not empty \(notes.txt\).*no nlnoise run"):
        workdir.RunDir(str(other)).check_config(cfg, IGNORE)
    # Directories a start made before it was stopped (no step, no metrics) are no run yet.
    fresh = tmp_path / "fresh"
    (fresh / "checkpoints").mkdir(parents=True)
    (fresh / "logs").mkdir()
    assert workdir.RunDir(str(fresh)).check_config(cfg, IGNORE) is None


def test_archive_keeps_the_live_lock_in_place(tmp_path):
    from nlnoise import lock

    held = lock.WorkdirLock(str(tmp_path))
    held.acquire()
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    dest = workdir.RunDir(str(tmp_path)).archive()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "archive"]
    assert (Path(dest) / "metrics.jsonl").exists()
    held.release()


def test_config_fingerprint_ignores_resumable_keys_only():
    a = workdir.config_fingerprint(load("digits"), IGNORE)
    assert a == workdir.config_fingerprint(load("digits", "epochs=50"), IGNORE)
    assert a != workdir.config_fingerprint(load("digits", "noise=0.3"), IGNORE)
    saved = json.loads(json.dumps(load("digits").to_dict(), default=str))  # as in config.json
    assert workdir.config_fingerprint(saved, IGNORE) == a


def test_a_failed_write_leaves_no_temporary_file(tmp_path):
    with pytest.raises(UnicodeEncodeError):
        workdir._atomic_write(str(tmp_path / "config.json"), "\udcff")
    assert list(tmp_path.iterdir()) == []


def test_segments_sum_every_start(tmp_path):
    run = workdir.RunDir(str(tmp_path))
    run.begin_segment(100.0, 0)
    assert run.update_segment(22, 5.0) == 5.0
    again = workdir.RunDir(str(tmp_path))  # the next start of the same run
    again.begin_segment(200.0, 22)
    assert again.update_segment(44, 3.0) == 8.0 and again.num_segments == 2
    saved = json.loads((tmp_path / "segments.json").read_text())
    assert [(s["from_step"], s["to_step"]) for s in saved] == [(0, 22), (22, 44)]
