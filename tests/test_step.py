"""nlnoise.step: train state, pure train/eval steps, non-finite detection, device-count
agreement, the on-device logging window, and an import free of the run machinery."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nlnoise import models, noise, optim, sharding
from nlnoise import step as step_lib

K = 4


def _state(noise_model="learned", freeze_steps=0, q_init=None, lr=0.1, seed=0):
    model = models.get_model("tiny_cnn", K)
    q_tx = (optim.q_optimizer(lr, weight_decay=0.1, freeze_steps=freeze_steps)
            if noise_model == "learned" else None)
    tx = optim.train_state_optimizer(optim.net_optimizer(lr, momentum=0.9), q_tx)
    return step_lib.create_train_state(
        model, tx, input_shape=(8, 8, 1), q_init=np.eye(K) if q_init is None else q_init,
        noise_model=noise_model, num_classes=K, seed=seed)


def _batch(seed=0, n=16):
    rng = np.random.default_rng(seed)
    return {"image": jnp.asarray(rng.normal(size=(n, 8, 8, 1)), jnp.float32),
            "label": jnp.asarray(rng.integers(0, K, n), jnp.int32)}


def test_train_step_is_pure_and_reduces_loss():
    state, batch = _state("none"), _batch()
    step = jax.jit(step_lib.train_step)
    rng = jax.random.key(1)
    a, ma = step(state, batch, rng)
    b, mb = step(state, batch, rng)
    assert jax.tree.all(jax.tree.map(lambda x, y: bool(jnp.array_equal(x, y)), a.params, b.params))
    assert float(ma["loss"]) == float(mb["loss"])
    s = state
    for _ in range(30):
        s, m = step(s, batch, rng)
    assert float(m["loss"]) < float(ma["loss"]) - 0.3
    assert int(s.step) == 30


def test_q_is_frozen_bit_for_bit_then_learned_and_fixed_q_never_moves():
    state, batch = _state("learned", freeze_steps=3), _batch()
    step = jax.jit(step_lib.train_step)
    for t in range(5):
        state, _ = step(state, batch, jax.random.key(t))
        if t < 3:
            assert np.array_equal(np.asarray(state.params["q"]), np.eye(K, dtype=np.float32))
    assert not np.array_equal(np.asarray(state.params["q"]), np.eye(K, dtype=np.float32))
    np.testing.assert_allclose(state.params["q"].sum(0), 1.0, atol=1e-6)
    q_star = noise.paper_random(K, 0.4)
    fixed = _state("true", q_init=q_star)
    for t in range(3):
        fixed, _ = step(fixed, batch, jax.random.key(t))
    np.testing.assert_array_equal(fixed.params["q"], q_star.astype(np.float32))


def test_eval_removes_the_noise_layer():
    state = _state("true", q_init=noise.pair_flip(K, 0.45))
    batch = {**_batch(), "mask": jnp.ones(16, bool)}
    out = step_lib.eval_step(state, batch)
    logits = step_lib.predict(state, batch["image"])
    np.testing.assert_array_equal(out["pred"], np.argmax(logits, -1))
    p = jax.nn.softmax(logits)
    np.testing.assert_allclose(out["outlier_score"], -np.sum(p * np.log(p), -1), rtol=1e-5)


def test_outlier_model_scores_with_the_extra_output():
    model = models.get_model("tiny_cnn", K + 1)
    tx = optim.train_state_optimizer(optim.net_optimizer(0.1), None)
    state = step_lib.create_train_state(model, tx, input_shape=(8, 8, 1),
                                     q_init=noise.outlier_eqn9(K, 0.2), noise_model="outlier",
                                     num_classes=K)
    out = step_lib.eval_step(state, _batch())
    logits = step_lib.predict(state, _batch()["image"])
    np.testing.assert_allclose(out["outlier_score"], jax.nn.softmax(logits)[:, K], rtol=1e-5)
    assert int(out["pred"].max()) < K  # predictions only among the K inlier classes


@pytest.mark.parametrize("poison", ["image", "q"])
def test_non_finite_is_caught_named_and_state_held(poison):
    state, batch = _state("learned"), _batch()
    step = jax.jit(step_lib.train_step)
    state, _ = step(state, batch, jax.random.key(0))
    good = jax.tree.map(np.asarray, state.params)
    if poison == "image":
        batch = {**batch, "image": batch["image"].at[0, 0, 0, 0].set(jnp.nan)}
    else:
        state = state.replace(params={**state.params,
                                      "q": state.params["q"].at[0, 0].set(jnp.inf)})
    state, _ = step(state, batch, jax.random.key(1))
    state, _ = step(state, _batch(1), jax.random.key(2))  # later good steps don't hide it
    with pytest.raises(step_lib.NonFiniteError, match="at step 1") as e:
        step_lib.check_finite(state)
    # A NaN pixel can vanish in max-pooling's forward pass but never in its gradient.
    assert ("gradients" in str(e.value)) if poison == "image" else ("Q" in str(e.value))
    if poison == "image":  # parameters were held at their last finite values
        jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state.params), good)


@pytest.mark.parametrize(("data", "model"), [(4, 1), (2, 2), (8, 1)])
def test_same_results_on_1_and_n_devices(data, model):
    """Data parallel (and Q/model-axis sharding) changes only summation order."""
    devices = jax.devices()
    assert len(devices) >= data * model, "conftest sets 8 simulated CPU devices"
    batches = [_batch(s, n=32) for s in range(4)]
    results = []
    for mesh in (sharding.make_mesh(1, 1, devices[:1]),
                 sharding.make_mesh(data, model, devices[: data * model])):
        base = _state("learned", q_init=noise.symmetric(K, 0.2))  # fresh: steps donate it
        st_sh = sharding.state_shardings(mesh, base)
        step = step_lib.jit_train_step(mesh, st_sh)
        s = jax.device_put(base, st_sh)
        for b in batches:
            s, m = step(s, jax.device_put(b, sharding.batch_sharding(mesh)))
        results.append((jax.tree.map(np.asarray, s.params), float(m["loss"])))
    (p1, l1), (pn, ln) = results
    assert l1 == pytest.approx(ln, rel=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6), p1, pn)


def test_q_sharded_over_model_axis():
    mesh = sharding.make_mesh(2, 4, jax.devices()[:8])
    state = _state("learned", q_init=np.eye(K))
    st_sh = sharding.state_shardings(mesh, state)
    placed = jax.device_put(state, st_sh)
    assert sharding.per_device_bytes(placed.params["q"]) == K * K * 4 // 4


def test_train_state_optimizer_gives_q_zero_updates_when_fixed():
    state = _state("true", q_init=noise.symmetric(K, 0.3))
    grads = jax.tree.map(jnp.ones_like, state.params)
    updates, _ = state.tx.update(grads, state.opt_state, state.params)
    assert float(jnp.abs(updates["q"]).max()) == 0.0
    assert float(optax.tree.norm(updates["net"])) > 0


def test_val_step_scores_the_combined_model_against_noisy_labels():
    q_star = noise.paper_random(K, 0.5, seed=3)
    batch = {**_batch(2), "mask": jnp.asarray([True] * 12 + [False] * 4)}
    for model, q in (("none", None), ("true", q_star)):
        state = _state(model, q_init=q)
        out = jax.jit(step_lib.val_step)(state, batch)
        logits = step_lib.predict(state, batch["image"])
        p = np.asarray(jax.nn.softmax(logits, -1), np.float64)
        p_noisy = p if q is None else p @ q_star.T  # (Q p)_j = sum_i q[j, i] p_i
        labels = np.asarray(batch["label"])
        nll = -np.log(p_noisy[np.arange(16), labels])
        np.testing.assert_allclose(out["nll"], nll, rtol=1e-5)
        correct = (p_noisy.argmax(-1) == labels) & np.asarray(batch["mask"])
        np.testing.assert_array_equal(out["noisy_correct"], correct)


def test_decay_scale_lives_in_the_optimizer_state_and_can_be_lowered():
    state = _state("learned")
    assert float(optax.tree.get(state.opt_state, "q_decay_scale")) == 1.0
    lowered = optax.tree.set(state.opt_state, q_decay_scale=jnp.asarray(0.0))
    batch = _batch()
    step = jax.jit(step_lib.train_step)
    without, _ = step(state.replace(opt_state=lowered), batch, jax.random.key(0))
    with_decay, _ = step(state, batch, jax.random.key(0))
    # The decay diffuses Q, so switching it off leaves Q with a larger trace.
    assert float(jnp.trace(without.params["q"])) > float(jnp.trace(with_decay.params["q"]))


@pytest.mark.parametrize("padded", [False, True])
def test_confusion_start_sets_q_from_predictions_at_the_end_of_the_freeze(padded, monkeypatch):
    if padded:  # Q stored with padded columns, as for K >= 1024
        monkeypatch.setattr(sharding, "Q_PAD_MIN_K", 1)
        monkeypatch.setattr(sharding, "Q_COLUMN_MULTIPLE", 8)
    model = models.get_model("tiny_cnn", K)
    tx = optim.train_state_optimizer(optim.net_optimizer(0.0, momentum=0.0),
                                     optim.q_optimizer(0.0, weight_decay=0.0, freeze_steps=3))
    state = step_lib.create_train_state(model, tx, input_shape=(8, 8, 1), q_init=np.eye(K),
                                     noise_model="learned", num_classes=K, q_init_step=3,
                                     q_stats_from=1)
    step = jax.jit(step_lib.train_step)
    batches = [_batch(s) for s in range(4)]
    probs = []
    for t, b in enumerate(batches):
        logits = step_lib.predict(state, b["image"])
        probs.append((np.asarray(jax.nn.softmax(logits)), np.asarray(b["label"])))
        state, _ = step(state, b, jax.random.key(t))
    stats = np.zeros((K, K))
    for p, y in probs[1:3]:  # steps 1 and 2 are in the window [1, 3)
        np.add.at(stats, y, p)
    expected = stats / stats.sum(0, keepdims=True)
    # lr 0: Q after step 3 is exactly the estimate (then projected: already on the simplex).
    np.testing.assert_allclose(state.q, expected, rtol=1e-4, atol=1e-6)
    assert state.params["q"].shape == (K, 8 if padded else K)


def test_padded_q_trains_like_square_q_and_shards_when_k_does_not_divide(monkeypatch):
    """Q stored with padded columns (as for K >= 1024) gives the same steps as square Q."""
    batches = [_batch(s, n=32) for s in range(3)]
    results = []
    for pad in (False, True):
        if pad:  # K=4 stands in for 21841: 8 devices do not divide it, its padded 8 columns
            monkeypatch.setattr(sharding, "Q_PAD_MIN_K", 1)
            monkeypatch.setattr(sharding, "Q_COLUMN_MULTIPLE", 8)
        state = _state("learned", q_init=noise.symmetric(K, 0.2))
        assert state.params["q"].shape == (K, 8 if pad else K) and state.q.shape == (K, K)
        mesh = sharding.make_mesh(1, 8 if pad else 1)
        st_sh = sharding.state_shardings(mesh, state)
        step = step_lib.jit_train_step(mesh, st_sh)
        s = jax.device_put(state, st_sh)
        if pad:
            assert sharding.per_device_bytes(s.params["q"]) == K * 8 * 4 // 8
        for b in batches:
            s, m = step(s, jax.device_put(b, sharding.batch_sharding(mesh)))
        results.append((np.asarray(s.q), float(m["loss"]), float(m["q_trace"])))
    (q0, l0, t0), (q1, l1, t1) = results
    assert l1 == pytest.approx(l0, rel=1e-5) and t1 == pytest.approx(t0, rel=1e-5)
    np.testing.assert_allclose(q1, q0, rtol=1e-4, atol=1e-6)
    assert not np.allclose(q1, noise.symmetric(K, 0.2), atol=1e-4)  # Q did learn


_WINDOW_SCRIPT = """
import sys
from functools import partial

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from nlnoise import step as step_lib

jax.config.update("jax_num_cpu_devices", 8)
mesh = Mesh(jax.devices(), ("d",))


@jax.jit
@partial(jax.shard_map, mesh=mesh, in_specs=(P("d"), P()), out_specs=(P(), P()))
def step(x, w):
    h = x[0]
    for _ in range(4):
        h = jnp.tanh(h @ w)
    g = jax.lax.psum(h.sum(0), "d")  # an all-reduce, as a data-parallel train step has
    return w + 1e-6 * g[None, :], g.sum()


x = jax.device_put(jnp.ones((8, 192, 192)), NamedSharding(mesh, P("d")))
w = jax.device_put(jnp.eye(192), NamedSharding(mesh, P()))
window = step_lib.DispatchWindow()
for _ in range(300):
    w, metric = step(x, w)
    window.push(metric)
    assert len(window) <= step_lib.MAX_STEPS_IN_FLIGHT
jax.block_until_ready(w)
print("finished")
"""


def test_dispatch_window_prevents_the_cpu_all_reduce_deadlock(tmp_path):
    """300 all-reduce steps on 8 CPU devices over 2+ cores. Dispatched without waiting, XLA:CPU
    (jaxlib 0.10.2) deadlocks once the host is 32 launches ahead and ends the process after
    the terminate timeout; the window keeps it at 3."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    env["XLA_FLAGS"] = "--xla_cpu_collective_call_terminate_timeout_seconds=20"
    script = tmp_path / "window.py"
    script.write_text(_WINDOW_SCRIPT)
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and "finished" in done.stdout, done.stderr[-2000:]


def test_dispatch_window_rejects_a_zero_limit():
    with pytest.raises(ValueError, match="limit=0"):
        step_lib.DispatchWindow(0)


def test_window_sums_stay_on_device_in_the_state_and_restart_when_zeroed():
    state, batch = _state("learned"), _batch()
    step = jax.jit(step_lib.train_step)
    losses, errors = [], []
    for t in range(3):
        state, m = step(state, _batch(t), jax.random.key(t))
        losses.append(m["loss"])
        errors.append(m["noisy_error"])
    w = jax.device_get(state.window)
    assert int(w["count"]) == 3
    # Summed in float32 in step order, as the loop logs them.
    assert w["loss"] == (np.float32(losses[0]) + np.float32(losses[1])) + np.float32(losses[2])
    assert w["noisy_error"] == (np.float32(errors[0]) + np.float32(errors[1])
                                + np.float32(errors[2]))
    means = step_lib.window_means(w)
    assert means["train_loss"] == pytest.approx(float(np.mean(losses)), rel=1e-6)
    assert means["noisy_train_error"] == pytest.approx(float(np.mean(errors)), rel=1e-6)
    state = state.replace(window=step_lib.zero_window())
    state, m = step(state, batch, jax.random.key(9))
    assert int(state.window["count"]) == 1 and float(state.window["loss"]) == float(m["loss"])
    assert step_lib.window_means(step_lib.zero_window()) == {"train_loss": 0.0,
                                                             "noisy_train_error": 0.0}


def test_checkpoint_items_are_the_resumable_fields_without_the_window():
    state = _state("learned")
    items = state.checkpoint_items()
    assert tuple(items) == step_lib.CHECKPOINT_FIELDS and "window" not in items
    assert items["q_stats"] is state.q_stats
    # It also names a state of shardings, the restore target's layout.
    mesh = sharding.make_mesh(2, 1, jax.devices()[:2])
    sh = sharding.state_shardings(mesh, state)
    assert set(sh.checkpoint_items()) == set(items)


def test_create_train_state_rejects_an_unknown_noise_model():
    with pytest.raises(ValueError, match="noise.model: must be one of"):
        _state("magic")


_IMPORT_SCRIPT = """
import sys
import nlnoise.step
heavy = sorted(m for m in sys.modules
               if m.split(".")[0] in ("ml_collections", "orbax", "grain")
               or m == "nlnoise.data" or m.startswith("nlnoise.data."))
print("HEAVY", heavy)
"""


def test_importing_step_pulls_in_no_config_checkpoint_or_data_machinery():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _IMPORT_SCRIPT], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "HEAVY []" in done.stdout, done.stdout
