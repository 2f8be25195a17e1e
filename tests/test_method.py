"""End-to-end proof that losses + noise + optim do what the paper says, on synthetic data.

A K=5 Gaussian mixture in 5-D, 50% of the labels flipped by the paper's random Q*. The network
is the smallest MLP, a single softmax layer: the clean posterior of equal-covariance Gaussians is
exactly linear-softmax, while the noisy posterior ``Q* softmax(Wx)`` is not, so the plain model
is forced to distort its boundaries to fit the noise, and the noise layer lets it stay clean.
This is the paper's section 3.1 argument in miniature; it runs in seconds.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nlnoise import losses, noise, optim

K, D, SEP, N_TRAIN, N_TEST = 5, 5, 1.5, 10_000, 5_000
STEPS, BATCH, FREEZE = 3000, 256, 1000


def _mixture(n: int, seed: int):
    means = np.random.default_rng(123).normal(size=(K, D)) * SEP
    rng = np.random.default_rng(seed)
    y = rng.integers(0, K, n)
    return (means[y] + rng.normal(size=(n, D))).astype(np.float32), y


def _train(model: str, q_star, x, noisy, seed=0):
    key = jax.random.key(seed)
    params = {
        "net": {"w": jax.random.normal(key, (D, K)) * 0.1, "b": jnp.zeros(K)},
        "q": jnp.asarray(q_star, jnp.float32) if model == "true" else jnp.eye(K),
    }
    q_tx = (optim.q_optimizer(0.01, weight_decay=0.1, freeze_steps=FREEZE)
            if model == "learned" else None)
    tx = optim.train_state_optimizer(optax.adam(1e-2), q_tx)
    opt_state = tx.init(params)

    def loss_fn(p, xb, yb):
        logits = xb @ p["net"]["w"] + p["net"]["b"]
        return losses.noisy_cross_entropy(logits, None if model == "none" else p["q"], yb).mean()

    @jax.jit
    def step(p, s, xb, yb):
        g = jax.grad(loss_fn)(p, xb, yb)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    rng = np.random.default_rng(seed)
    for _ in range(STEPS):
        idx = rng.integers(0, len(x), BATCH)
        params, opt_state = step(params, opt_state, x[idx], noisy[idx])
    return params


@pytest.fixture(scope="module")
def results():
    x, y = _mixture(N_TRAIN, 0)
    xt, yt = _mixture(N_TEST, 1)
    q_star = noise.paper_random(K, 0.5, seed=0)
    noisy = noise.corrupt_labels(y, q_star, seed=0)
    out = {}
    for model in ("none", "learned", "true"):
        p = _train(model, q_star, x, noisy)
        acc = float(np.mean(np.argmax(xt @ np.asarray(p["net"]["w"]) + np.asarray(p["net"]["b"]),
                                      -1) == yt))
        out[model] = {"acc": acc, "q": np.asarray(p["q"]), "q_rel_l1": noise.relative_l1(
            np.asarray(p["q"]), q_star)}
    print({m: (round(r["acc"], 4), round(r["q_rel_l1"], 3)) for m, r in out.items()})
    return out


def test_learned_q_recovers_q_star(results):
    assert results["learned"]["q_rel_l1"] < 0.15
    q = results["learned"]["q"]
    np.testing.assert_allclose(q.sum(0), 1.0, atol=1e-5)
    assert (q >= 0).all()


def test_learned_q_beats_plain_softmax_clearly(results):
    assert results["learned"]["acc"] > results["none"]["acc"] + 0.05


def test_true_q_at_least_as_good_as_learned(results):
    # One standard error of a 5000-example accuracy is ~0.005.
    assert results["true"]["acc"] >= results["learned"]["acc"] - 0.005
    assert results["true"]["acc"] > results["none"]["acc"] + 0.05
