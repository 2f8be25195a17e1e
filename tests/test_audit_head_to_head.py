"""bench/audit_head_to_head.py: where its audits go (the runs themselves are the sweeps')."""

import itertools
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "bench"))
import audit_head_to_head as h2h


def test_every_family_seed_and_params_gets_its_own_audit_directory(tmp_path):
    # fashion_50 and cifar_50 name their cells alike; their audits must not collide (the
    # audit refuses to overwrite another run's audit, so a collision stops the benchmark).
    dirs = [h2h.audit_dir(tmp_path, family, seed, params)
            for family, seed, params in itertools.product(h2h.FAMILIES, (0, 1, 2, 10),
                                                          ("best", "final"))]
    assert len(set(dirs)) == len(dirs)
    assert all(d.is_relative_to(tmp_path / "head_to_head" / "audits") for d in dirs)
    assert h2h.audit_dir(tmp_path, "fashion_50", 0, "best") != h2h.audit_dir(
        tmp_path, "cifar_50", 0, "best")


def test_a_finished_audit_is_reused_only_for_the_same_run_and_parameters(tmp_path):
    run, out = tmp_path / "run", tmp_path / "audit"
    out.mkdir()
    assert not h2h.finished_audit(out, run, "best")  # nothing there
    identity = {"mode": "in-sample", "run": str(run.resolve()), "params": "best"}
    (out / "audit.json").write_text(json.dumps({"identity": identity}))
    assert not h2h.finished_audit(out, run, "best")  # predictions.npz missing
    (out / "predictions.npz").write_bytes(b"")
    assert h2h.finished_audit(out, run, "best")
    assert not h2h.finished_audit(out, run, "final")
    assert not h2h.finished_audit(out, tmp_path / "other", "best")
    (out / "audit.json").write_text("{not json")
    assert not h2h.finished_audit(out, run, "best")
