"""The grain pipeline: sharding, epochs, resume (state and orbax), eval padding, global batches."""

from __future__ import annotations

import numpy as np
import pytest

import nlnoise.data as data

G = 64  # global batch size used throughout


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    return {"name": "digits", "cache_dir": str(tmp_path_factory.mktemp("cache"))}


@pytest.fixture(scope="module")
def ds(cfg):
    return data.load(cfg, noise_kind="symmetric", noise_level=0.3, noise_seed=0)


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_batches_have_the_documented_fields(ds, cfg):
    batch = next(data.train_iterator(ds, cfg, global_batch_size=G, seed=0))
    assert batch["image"].shape == (G, 8, 8, 1) and batch["image"].dtype == np.float32
    assert batch["label"].dtype == np.int32 and batch["clean_label"].dtype == np.int32
    assert batch["is_outlier"].dtype == bool and batch["index"].dtype == np.int64
    assert np.array_equal(batch["label"], ds.train_labels[batch["index"]])
    want = ds.preprocessor(ds.train.get_batch(batch["index"])["image"], train=False)
    np.testing.assert_allclose(batch["image"], want)


@pytest.mark.parametrize("num_procs", [2, 4])
def test_processes_partition_each_epoch(ds, cfg, num_procs):
    n = len(ds.train)
    spe = data.steps_per_epoch(ds, G)
    assert spe == n // G
    iters = [
        data.train_iterator(
            ds, cfg, global_batch_size=G, seed=5, process_index=p, process_count=num_procs
        )
        for p in range(num_procs)
    ]
    single = data.train_iterator(ds, cfg, global_batch_size=G, seed=5)
    for epoch in range(2):
        seen = []
        for _ in range(spe):
            local = [next(it) for it in iters]
            assert all(b["index"].shape == (G // num_procs,) for b in local)
            merged = np.concatenate([b["index"] for b in local])
            # The global batch does not depend on the number of processes.
            assert np.array_equal(merged, next(single)["index"])
            seen.append(merged)
        seen = np.concatenate(seen)
        assert len(np.unique(seen)) == seen.size == spe * G  # no duplicates
        assert n - seen.size == n % G < G  # only the remainder is missed
        if epoch == 0:
            first = seen
    assert not np.array_equal(first, seen)  # each epoch is reshuffled


def test_every_example_is_seen_across_epochs(ds, cfg):
    it = data.train_iterator(ds, cfg, global_batch_size=G, seed=1)
    spe = data.steps_per_epoch(ds, G)
    seen = np.concatenate([b["index"] for b in _take(it, 4 * spe)])
    assert set(seen) == set(range(len(ds.train)))


def test_mid_epoch_resume_yields_the_remaining_batches(ds, cfg):
    it = data.train_iterator(ds, cfg, global_batch_size=G, seed=2)
    spe = data.steps_per_epoch(ds, G)
    _take(it, 7)
    state = it.get_state()
    expected = _take(it, spe + 3)  # the rest of this epoch and into the next
    resumed = data.train_iterator(ds, cfg, global_batch_size=G, seed=2)
    resumed.set_state(state)
    for a, b in zip(expected, _take(resumed, spe + 3), strict=True):
        assert np.array_equal(a["index"], b["index"])
        np.testing.assert_array_equal(a["image"], b["image"])


def test_resume_through_an_orbax_checkpoint_manager(ds, cfg, tmp_path):
    import grain
    import orbax.checkpoint as ocp

    it = data.train_iterator(ds, cfg, global_batch_size=G, seed=3)
    _take(it, 5)
    with ocp.CheckpointManager(tmp_path / "ckpt", item_names=("state", "data")) as mngr:
        mngr.save(
            5,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave({"w": np.arange(3.0)}),
                data=grain.checkpoint.CheckpointSave(it),
            ),
        )
        mngr.wait_until_finished()
    expected = _take(it, 4)

    fresh = data.train_iterator(ds, cfg, global_batch_size=G, seed=3)
    with ocp.CheckpointManager(tmp_path / "ckpt", item_names=("state", "data")) as mngr:
        assert mngr.latest_step() == 5
        restored = mngr.restore(
            5,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore({"w": np.zeros(3)}),
                data=grain.checkpoint.CheckpointRestore(fresh),
            ),
        )
    np.testing.assert_array_equal(restored["state"]["w"], np.arange(3.0))
    for a, b in zip(expected, _take(restored["data"], 4), strict=True):
        assert np.array_equal(a["index"], b["index"])


def test_augmentation_is_resumable(tmp_path):
    # Crops and flips depend on (seed, epoch, index), so a resumed run sees the same ones.
    cfg = {"name": "digits", "cache_dir": str(tmp_path), "image_size": 6, "random_flip": True}
    ds = data.load(cfg)
    it = data.train_iterator(ds, cfg, global_batch_size=G, seed=4)
    _take(it, 3)
    state = it.get_state()
    want = next(it)
    again = data.train_iterator(ds, cfg, global_batch_size=G, seed=4)
    again.set_state(state)
    got = next(again)
    assert got["image"].shape == (G, 6, 6, 1)
    np.testing.assert_array_equal(got["image"], want["image"])


@pytest.mark.parametrize("num_procs", [1, 2, 4])
def test_eval_batches_cover_each_example_once_with_padding(ds, cfg, num_procs):
    source = ds.test  # 360 examples: the last global batch of 64 is padded
    per_proc = [
        list(
            data.eval_batches(
                source, cfg, ds, global_batch_size=G, process_index=p, process_count=num_procs
            )
        )
        for p in range(num_procs)
    ]
    steps = -(-len(source) // G)
    assert all(len(batches) == steps for batches in per_proc)
    idx, labels = [], []
    for batches in per_proc:
        for b in batches:
            assert b["image"].shape == (G // num_procs, 8, 8, 1)
            assert b["mask"].dtype == bool
            assert (b["index"][~b["mask"]] == -1).all()
            idx.append(b["index"][b["mask"]])
            labels.append(b["label"][b["mask"]])
    idx = np.concatenate(idx)
    assert np.array_equal(np.sort(idx), np.arange(len(source)))
    assert np.array_equal(np.concatenate(labels), source.labels[idx])
    assert sum((~b["mask"]).sum() for bs in per_proc for b in bs) == steps * G - len(source)


def test_batch_size_must_split_across_processes(ds, cfg):
    with pytest.raises(data.DataError, match=r"global_batch_size=63 is not divisible by .*=2"):
        data.train_iterator(ds, cfg, global_batch_size=63, seed=0, process_count=2)
    with pytest.raises(data.DataError, match=r"global_batch_size=2048 exceeds the 1437"):
        data.train_iterator(ds, cfg, global_batch_size=2048, seed=0)


def test_make_global_batch(ds, cfg):
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    devices = np.array(jax.devices())
    mesh = Mesh(devices, ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
    local = next(data.train_iterator(ds, cfg, global_batch_size=G, seed=0))
    glob = data.make_global_batch(local, NamedSharding(mesh, PartitionSpec("data")))
    assert set(glob) == set(local)
    for key, value in local.items():
        assert isinstance(glob[key], jax.Array) and glob[key].shape == value.shape
        np.testing.assert_array_equal(np.asarray(glob[key]), value)
