"""CheckpointStore: state + data iterator round trip, damaged checkpoints, failed saves, and
read-only restores that never change the directory."""

import os
import pathlib
import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nlnoise import checkpoint, data, optim, support


def _abstract(tree):
    return checkpoint.abstract_like(tree, jax.tree.map(lambda x: x.sharding, tree))


@pytest.fixture(scope="module")
def digits():
    cfg = data.default_dataset_config()
    cfg.name = "digits"
    return cfg, data.load(cfg)


def _iterator(digits):
    cfg, ds = digits
    return data.train_iterator(ds, cfg, global_batch_size=32, seed=0)


def _tree(x: float):
    return {"w": jnp.full((3, 4), x, jnp.float32), "step": jnp.asarray(int(x), jnp.int32)}


def test_round_trip_restores_state_and_data_position(tmp_path, digits):
    it = _iterator(digits)
    for _ in range(3):
        next(it)
    store = checkpoint.CheckpointStore(str(tmp_path / "ckpt"), keep=2)
    store.save(3, _tree(3.0), it)
    store.wait()
    expected = [next(it)["index"] for _ in range(4)]
    it2 = _iterator(digits)
    restored = checkpoint.CheckpointStore(str(tmp_path / "ckpt")).restore(_tree(0.0), it2)
    assert restored is not None
    state, step = restored
    assert step == 3
    np.testing.assert_array_equal(state["w"], np.full((3, 4), 3.0))
    for e in expected:
        np.testing.assert_array_equal(next(it2)["index"], e)


def test_keep_last_n(tmp_path, digits):
    it = _iterator(digits)
    store = checkpoint.CheckpointStore(str(tmp_path / "c"), keep=2)
    for s in (1, 2, 3):
        store.save(s, _tree(float(s)), it)
    store.wait()
    assert store.steps() == [2, 3]


def _corrupt(step_dir: pathlib.Path, how: str) -> None:
    files = sorted(p for p in step_dir.rglob("*") if p.is_file() and p.stat().st_size > 0)
    assert files
    if how == "truncate":
        for p in files:
            p.write_bytes(p.read_bytes()[: p.stat().st_size // 3])
    elif how == "garbage":
        for p in files:
            p.write_bytes(os.urandom(p.stat().st_size))
    elif how == "half-written":  # the directory exists but the save never finished
        for p in files:
            p.unlink()


@pytest.mark.parametrize("how", ["truncate", "garbage", "half-written"])
def test_damaged_latest_falls_back_to_newest_intact(tmp_path, digits, how, caplog):
    it = _iterator(digits)
    directory = tmp_path / "ckpt"
    store = checkpoint.CheckpointStore(str(directory), keep=3)
    store.save(1, _tree(1.0), it)
    store.save(2, _tree(2.0), it)
    store.wait()
    _corrupt(directory / "2", how)
    store2 = checkpoint.CheckpointStore(str(directory))
    with caplog.at_level("WARNING", logger="nlnoise"):
        state, step = store2.restore(_tree(0.0), _iterator(digits))
    assert step == 1 and float(state["w"][0, 0]) == 1.0
    assert "step 2 is damaged" in caplog.text
    assert (directory / "1").exists()  # the intact one is never touched
    assert list((tmp_path / "ckpt-damaged").iterdir())  # the damaged one is kept aside
    # The resumed run can save step 2 again.
    store2.save(2, _tree(2.5), _iterator(digits))
    store2.wait()
    assert store2.steps() == [1, 2]


def test_no_intact_checkpoint_is_an_error_on_every_try_and_nothing_moves(tmp_path, digits):
    it = _iterator(digits)
    store = checkpoint.CheckpointStore(str(tmp_path / "c"))
    for s in (1, 2):
        store.save(s, _tree(float(s)), it)
    store.wait()
    for s in ("1", "2"):
        _corrupt(tmp_path / "c" / s, "garbage")
    for _ in range(2):  # a scheduler's retry gets the same answer
        with pytest.raises(checkpoint.NoIntactCheckpointError, match="could be read.*--overwrite"):
            checkpoint.CheckpointStore(str(tmp_path / "c")).restore(_tree(0.0),
                                                                    _iterator(digits))
    assert sorted(p.name for p in (tmp_path / "c").iterdir() if p.name.isdigit()) == ["1", "2"]
    assert not (tmp_path / "c-damaged").exists()
    # Damaged checkpoints set aside with none left beside them: still no fresh start.
    (tmp_path / "c-damaged").mkdir()
    for s in ("1", "2"):
        os.replace(tmp_path / "c" / s, tmp_path / "c-damaged" / s)
    with pytest.raises(checkpoint.NoIntactCheckpointError, match="damaged ones"):
        checkpoint.CheckpointStore(str(tmp_path / "c")).restore(_tree(0.0), _iterator(digits))


def test_a_checkpoint_of_another_run_is_refused_not_skipped(tmp_path, digits):
    mine = {"config_fingerprint": "a", "dataset_fingerprint": "d"}
    store = checkpoint.CheckpointStore(str(tmp_path / "c"), identity=mine)
    store.save(1, _tree(1.0), _iterator(digits))
    store.close()
    assert checkpoint.CheckpointStore(str(tmp_path / "c"), identity=mine).restore(
        _tree(0.0))[1] == 1
    for other, what in (({**mine, "config_fingerprint": "b"}, "its config fingerprint"),
                        ({**mine, "dataset_fingerprint": "e"}, "its training labels")):
        with pytest.raises(checkpoint.CheckpointError, match=rf"step 1 .*another run \({what}"):
            checkpoint.CheckpointStore(str(tmp_path / "c"), identity=other).restore(_tree(0.0))
    assert (tmp_path / "c" / "1").exists() and not (tmp_path / "c-damaged").exists()
    # A checkpoint written without an identity is judged by the workdir's config.json alone.
    plain = checkpoint.CheckpointStore(str(tmp_path / "p"))
    plain.save(1, _tree(1.0), _iterator(digits))
    plain.close()
    assert checkpoint.CheckpointStore(str(tmp_path / "p"), identity=mine).restore(
        _tree(0.0))[1] == 1


_FULL_DISK_SAVE = r"""
import resource, signal, sys
import jax.numpy as jnp
from nlnoise import checkpoint, data
cfg = data.default_dataset_config(); cfg.name = "digits"
ds = data.load(cfg)
it = data.train_iterator(ds, cfg, global_batch_size=32, seed=0)
store = checkpoint.CheckpointStore(sys.argv[1])
# A disk that is full from now on: every write past 64 bytes fails with EFBIG (even for root).
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))
try:
    store.save(2, {"w": jnp.full((64, 64), 2.0), "step": jnp.asarray(2)}, it)
    store.wait()
except checkpoint.CheckpointError as e:
    print("CLEAR ERROR:", e)
    sys.exit(3)
sys.exit(0)
"""


def test_failed_save_on_full_disk_raises_and_keeps_previous(tmp_path, digits):
    import subprocess
    import sys

    it = _iterator(digits)
    directory = tmp_path / "c"
    store = checkpoint.CheckpointStore(str(directory))
    store.save(1, {"w": jnp.full((64, 64), 1.0), "step": jnp.asarray(1)}, it)
    store.wait()
    proc = subprocess.run([sys.executable, "-c", _FULL_DISK_SAVE, str(directory)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stdout + proc.stderr[-2000:]
    assert "CLEAR ERROR" in proc.stdout and "step 2" in proc.stdout
    state, step = checkpoint.CheckpointStore(str(directory)).restore(
        {"w": jnp.zeros((64, 64)), "step": jnp.asarray(0)}, _iterator(digits))
    assert step == 1 and float(state["w"][0, 0]) == 1.0


def test_abstract_like_carries_shardings():
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:2]), ("data",))
    sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    abstract = checkpoint.abstract_like({"x": jnp.zeros(4)}, {"x": sh})
    assert abstract["x"].sharding == sh and abstract["x"].shape == (4,)


def test_best_params_keep_the_lowest_metric_and_drop_replayed_steps(tmp_path):
    best = checkpoint.BestParams(str(tmp_path / "best"))
    assert best.restore() is None
    for step, value in ((1, 0.9), (2, 0.5), (3, 0.7)):
        best.save(step, _tree(float(step)), value)
    assert best.steps() == [2]  # a worse save never replaces the best
    best.save(2, _tree(99.0), 0.1)  # a replayed step is already there: kept as it was
    params, step = checkpoint.BestParams(str(tmp_path / "best")).restore(_tree(0.0))
    assert step == 2
    np.testing.assert_array_equal(params["w"], np.full((3, 4), 2.0))
    best.save(5, _tree(5.0), 0.4)
    best.drop_after(4)  # resumed from step 4: step 5 will be found again
    assert best.restore() is None
    best.close()


def test_unreadable_best_params_name_the_directory(tmp_path):
    best = checkpoint.BestParams(str(tmp_path / "best"))
    best.save(1, _tree(1.0), 0.3)
    best.close()
    for f in (tmp_path / "best" / "1").rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "metrics" not in str(f):
            f.write_bytes(b"garbage")
    with pytest.raises(checkpoint.CheckpointError, match="best parameters at step 1"):
        checkpoint.BestParams(str(tmp_path / "best")).restore(_tree(0.0))


def _listing(d: pathlib.Path) -> dict[str, tuple]:
    return {str(p.relative_to(d)): (p.is_dir(), p.stat().st_size, p.stat().st_mtime_ns)
            for p in [d, *d.rglob("*")]}


def test_read_only_store_skips_damage_in_place_and_writes_nothing(tmp_path, digits, caplog):
    it = _iterator(digits)
    directory = tmp_path / "ckpt"
    store = checkpoint.CheckpointStore(str(directory), keep=3)
    for s in (1, 2):
        store.save(s, _tree(float(s)), it)
    store.close()
    _corrupt(directory / "2", "truncate")
    before = _listing(tmp_path)
    reader = checkpoint.CheckpointStore(str(directory), read_only=True)
    with caplog.at_level("WARNING", logger="nlnoise"):
        state, step = reader.restore(_tree(0.0))  # no data iterator: the state alone
    assert step == 1 and float(state["w"][0, 0]) == 1.0
    assert "step 2 is damaged" in caplog.text and "left in place" in caplog.text
    with pytest.raises(checkpoint.CheckpointError, match="read-only"):
        reader.save(3, _tree(3.0), it)
    reader.close()
    assert _listing(tmp_path) == before  # nothing moved, renamed, created or written
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint directory"):
        checkpoint.CheckpointStore(str(tmp_path / "none"), read_only=True)
    assert not (tmp_path / "none").exists()


def test_read_only_best_params_restore_and_refuse_changes(tmp_path):
    best = checkpoint.BestParams(str(tmp_path / "best"))
    for step, value in ((1, 0.9), (2, 0.5)):
        best.save(step, _tree(float(step)), value)
    best.close()
    before = _listing(tmp_path)
    reader = checkpoint.BestParams(str(tmp_path / "best"), read_only=True)
    params, step = reader.restore(_tree(0.0))
    assert step == 2
    np.testing.assert_array_equal(params["w"], np.full((3, 4), 2.0))
    with pytest.raises(checkpoint.CheckpointError, match="read-only"):
        reader.save(3, _tree(3.0), 0.1)
    with pytest.raises(checkpoint.CheckpointError, match="read-only"):
        reader.drop_after(0)
    reader.close()
    assert _listing(tmp_path) == before
    with pytest.raises(checkpoint.CheckpointError, match=r"no best parameters.*val_size"):
        checkpoint.BestParams(str(tmp_path / "missing"), read_only=True)
    assert not (tmp_path / "missing").exists()


class _OldQStepState(NamedTuple):
    """``optim.QStepState`` as nlnoise saved it before the state kept each column's support."""

    q_decay_scale: jax.Array
    count: jax.Array
    tau: Any


def _as_old(tree):
    return jax.tree.map(
        lambda s: _OldQStepState(s.q_decay_scale, s.count, s.tau)
        if isinstance(s, optim.QStepState) else s,
        tree, is_leaf=lambda s: isinstance(s, optim.QStepState))


def test_a_checkpoint_without_the_support_restores_with_a_fresh_one(tmp_path, digits, caplog):
    k = support.SUPPORT_MIN_ROWS
    tx = optim.q_optimizer(0.01, weight_decay=0.1)
    q = jnp.eye(k, dtype=jnp.float32)
    rng = np.random.default_rng(0)
    step = jax.jit(lambda q, g, st: (lambda u, st: (q + u, st))(*tx.update(g, st, q)))

    def grad():
        g = np.zeros((k, k), np.float32)
        g[rng.integers(0, k, 16)] = -rng.random((16, k), np.float32)
        return jnp.asarray(g)

    st = tx.init(q)
    for _ in range(3):
        q, st = step(q, grad(), st)
    assert int(optax.tree.get(st, "support").fast) > 0  # the support was in use
    it = _iterator(digits)
    store = checkpoint.CheckpointStore(str(tmp_path / "ckpt"))
    store.save(3, {"q": q, "opt": _as_old(st)}, it)
    store.wait()

    fresh = {"q": jnp.eye(k, dtype=jnp.float32), "opt": tx.init(q)}
    target = _abstract(fresh)
    with caplog.at_level("WARNING", logger="nlnoise"):
        restored, at = checkpoint.CheckpointStore(str(tmp_path / "ckpt")).restore(
            target, _iterator(digits), defaults=fresh, fillable=optim.REBUILT_STATE)
    assert at == 3 and re.search(r"without opt/\d+/support \(an older", caplog.text)
    assert jax.tree.structure(restored) == jax.tree.structure(fresh)
    np.testing.assert_array_equal(restored["q"], q)
    np.testing.assert_array_equal(optax.tree.get(restored["opt"], "tau"),
                                  optax.tree.get(st, "tau"))
    assert not bool(optax.tree.get(restored["opt"], "support").valid)
    # The next step from the restored state equals the next step of the run that was saved.
    g = grad()
    q_saved, _ = step(q, g, st)
    q_restored, st_restored = step(restored["q"], g, restored["opt"])
    np.testing.assert_allclose(q_restored, q_saved, atol=1e-6)
    assert int(optax.tree.get(st_restored, "count")) == 4


def test_a_missing_leaf_that_is_not_fillable_is_not_restored(tmp_path, digits):
    it = _iterator(digits)
    store = checkpoint.CheckpointStore(str(tmp_path / "ckpt"))
    store.save(1, {"w": jnp.ones(3)}, it)
    store.wait()
    fresh = {"w": jnp.zeros(3), "v": jnp.zeros(2)}
    with pytest.raises(checkpoint.NoIntactCheckpointError, match="could be read"):
        checkpoint.CheckpointStore(str(tmp_path / "ckpt")).restore(
            _abstract(fresh), defaults=fresh, fillable=("support",))
    assert store.steps() == [1]  # nothing moved
