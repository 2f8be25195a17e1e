"""nlnoise.eval_loop: whole-split evaluation from a device cache equals the streamed per-batch
evaluation, on real data (digits, open-set outliers and a held-out noisy split)."""

import pathlib
import sys

import jax
import numpy as np
import pytest

from nlnoise import eval_loop, models, optim, resolve, sharding
from nlnoise import step as step_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from test_config import load  # noqa: E402


@pytest.fixture(scope="module")
def digits():
    """Open-set digits: classes 0-4 inliers, outliers in training and test; a noisy held-out
    split of 300; 5 inlier outputs + the outlier class; eval batches of 200 (the test splits
    are not multiples of it, so the last batch is padded)."""
    cfg = load("digits", "runlocal,model='outlier',kind='identity',noise=0.0")
    for key, value in {"inlier_classes": (0, 1, 2, 3, 4), "num_outliers": 200,
                       "num_known_outliers": 100, "val_size": 300}.items():
        cfg.dataset[key] = value
    ds = resolve.load_dataset(cfg)
    spec = resolve.resolve_run(cfg, ds)
    return cfg, ds, spec


def _evaluator(digits, data_devices, **kwargs):
    cfg, ds, spec = digits
    mesh = sharding.make_mesh(data_devices, 1, jax.devices()[:data_devices])
    model = models.get_model("mlp", spec.num_outputs)
    tx = optim.train_state_optimizer(optim.net_optimizer(0.1), None)

    def init():
        return step_lib.create_train_state(model, tx, input_shape=tuple(ds.image_shape),
                                           q_init=spec.q_init, noise_model="outlier",
                                           num_classes=spec.num_classes, seed=1)

    state_sh = sharding.state_shardings(mesh, jax.eval_shape(init))
    state = jax.jit(init, out_shardings=state_sh)()
    evaluator = eval_loop.Evaluator(cfg.dataset, ds, mesh, state_sh,
                                    num_classes=spec.num_classes, q_true=spec.q_true, **kwargs)
    return evaluator, state


@pytest.mark.parametrize("data_devices", [1, 4])
def test_cached_pass_equals_streamed_batches_in_split_order(digits, data_devices):
    _, ds, _ = digits
    evaluator, state = _evaluator(digits, data_devices)
    for source, fn in ((ds.test, step_lib.eval_step), (ds.test_noisy, step_lib.eval_step),
                       (ds.val, step_lib.val_step)):
        assert len(source) % evaluator.batch_size  # a padded last batch is dropped
        cached = evaluator.outputs(state, source, fn)
        streamed = evaluator._streamed(state, source, fn)
        assert sorted(cached) == sorted(streamed)
        for key, value in streamed.items():
            np.testing.assert_array_equal(cached[key], value, err_msg=key)
        assert len(cached["label"]) == len(source)
        np.testing.assert_array_equal(cached["label"], source.labels)
        np.testing.assert_array_equal(cached["is_outlier"], source.is_outlier)
    # Each split was preprocessed once and is kept for the next evaluation.
    assert len(evaluator._cache) == 3
    again = evaluator.outputs(state, ds.test)
    assert len(evaluator._cache) == 3
    np.testing.assert_array_equal(again["pred"], evaluator._streamed(state, ds.test,
                                                                      step_lib.eval_step)["pred"])


def test_record_matches_the_predictions_and_over_budget_splits_stream(digits):
    _, ds, spec = digits
    evaluator, state = _evaluator(digits, 2)
    record = evaluator(state)
    assert set(record) == {"test_error", "_confusion", "outlier_ap", "_pr", "val_noisy_loss",
                           "val_noisy_error", "q_trace", "q_rel_l1", "q_star_trace"}
    # The clean test error is the network's own argmax over the K inlier classes.
    images = ds.preprocessor(ds.test.get_batch(np.arange(len(ds.test)))["image"], train=False)
    logits = np.asarray(step_lib.predict(state, images))
    pred = logits[:, :spec.num_classes].argmax(-1)
    assert record["test_error"] == pytest.approx(np.mean(pred != ds.test.labels), abs=1e-12)
    assert record["_confusion"].shape == (spec.num_classes, spec.num_classes)
    assert 0.0 <= record["outlier_ap"] <= 1.0
    # The same initial state (same seed) under a streaming evaluator of its own.
    streaming, same_state = _evaluator(digits, 2, max_cached_bytes=0)
    assert not streaming.fits_on_device(ds.test) and evaluator.fits_on_device(ds.test)
    streamed = streaming(same_state)
    assert not streaming._cache
    for key in ("test_error", "outlier_ap", "val_noisy_loss", "val_noisy_error", "q_trace"):
        assert streamed[key] == record[key], key
    np.testing.assert_array_equal(streamed["_confusion"], record["_confusion"])
