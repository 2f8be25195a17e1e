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
