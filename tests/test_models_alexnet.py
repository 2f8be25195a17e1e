"""AlexNet: shapes, hand-derived parameter count, dropout only in train mode."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nlnoise.models.alexnet import AlexNet

# Hand derivation (single tower, every layer sees all maps of the previous one):
#   conv1 11*11*3*96 + 96       =     34,944   (227 -> (227 - 11) / 4 + 1 = 55, pool -> 27)
#   conv2 5*5*96*256 + 256      =    614,656   (27, pool -> 13)
#   conv3 3*3*256*384 + 384     =    885,120
#   conv4 3*3*384*384 + 384     =  1,327,488
#   conv5 3*3*384*256 + 256     =    884,992   (13, pool -> 6)
#   fc6   6*6*256*4096 + 4096   = 37,752,832
#   fc7   4096*4096 + 4096      = 16,781,312
#   fc8   4096*K + K            =     45,067 for K = 11, 4,097,000 for K = 1000
PER_LAYER = {"conv1": 34_944, "conv2": 614_656, "conv3": 885_120, "conv4": 1_327_488,
             "conv5": 884_992, "fc6": 37_752_832, "fc7": 16_781_312}


def _param_shapes(model):
    x = jax.ShapeDtypeStruct((2, 227, 227, 3), jnp.float32)
    return jax.eval_shape(lambda v: model.init(jax.random.key(0, impl="rbg"), v)["params"], x)


def _count(tree):
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


@pytest.mark.parametrize("k,fc8", [(11, 45_067), (1000, 4_097_000)])
def test_parameter_count_and_layer_names(k, fc8):
    params = _param_shapes(AlexNet(num_classes=k))
    assert {name: _count(p) for name, p in params.items()} == PER_LAYER | {"fc8": fc8}
    assert _count(params) == sum(PER_LAYER.values()) + fc8
    assert _count(params) == (62_378_344 if k == 1000 else 58_326_411)
    assert params["conv1"]["kernel"].shape == (11, 11, 3, 96)
    assert params["fc6"]["kernel"].shape == (9216, 4096)


@pytest.fixture(scope="module")
def alexnet():
    model = AlexNet(num_classes=11)
    init = jax.jit(lambda key: model.init(key, jnp.zeros((1, 227, 227, 3)))["params"])
    params = init(jax.random.key(0, impl="rbg"))
    apply = jax.jit(lambda p, x, train, key: model.apply({"params": p}, x, train=train,
                                                         rngs={"dropout": key}),
                    static_argnums=2)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 227, 227, 3))
    return model, params, apply, x


def test_output_shape_dtype_and_initial_biases(alexnet):
    _, params, apply, x = alexnet
    logits = apply(params, x, False, jax.random.PRNGKey(0))
    assert logits.shape == (2, 11) and logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits)))
    for name in ("conv2", "conv4", "conv5", "fc6", "fc7"):  # AlexNet paper, section 5
        np.testing.assert_array_equal(params[name]["bias"], 1.0)
    for name in ("conv1", "conv3", "fc8"):
        np.testing.assert_array_equal(params[name]["bias"], 0.0)
    assert float(jnp.std(params["fc6"]["kernel"])) == pytest.approx(0.01, rel=0.02)


def test_dropout_only_in_train_mode(alexnet):
    _, params, apply, x = alexnet
    k1, k2 = jax.random.PRNGKey(1), jax.random.PRNGKey(2)
    eval1, eval2 = apply(params, x, False, k1), apply(params, x, False, k2)
    np.testing.assert_array_equal(eval1, eval2)
    train1, train1b, train2 = apply(params, x, True, k1), apply(params, x, True, k1), \
        apply(params, x, True, k2)
    np.testing.assert_array_equal(train1, train1b)  # same rng, same mask
    assert not np.allclose(train1, train2)  # different rng, different mask
    assert not np.allclose(train1, eval1)


def test_train_mode_needs_a_dropout_rng(alexnet):
    model, params, _, x = alexnet
    with pytest.raises(Exception, match="dropout"):
        jax.eval_shape(lambda p, v: model.apply({"params": p}, v, train=True), params, x)


@pytest.mark.parametrize("shape", [(2, 224, 224, 3), (2, 227, 227, 1), (227, 227, 3)])
def test_rejects_other_input_sizes(shape):
    with pytest.raises(ValueError, match="227, 227, 3"):
        jax.eval_shape(lambda v: AlexNet(num_classes=3).init(jax.random.PRNGKey(0), v),
                       jax.ShapeDtypeStruct(shape, jnp.float32))


def test_a_smaller_image_size_keeps_every_layer():
    # 67 -> conv1 15 -> pool 7 -> conv2 7 -> pool 3 -> conv3-5 3 -> pool 1: fc6 sees 256 maps.
    params = jax.eval_shape(
        lambda v: AlexNet(num_classes=5, image_size=67).init(jax.random.key(0), v)["params"],
        jax.ShapeDtypeStruct((2, 67, 67, 3), jnp.float32))
    assert set(params) == set(PER_LAYER) | {"fc8"}
    assert params["fc6"]["kernel"].shape == (256, 4096)
    assert params["conv5"]["kernel"].shape == (3, 3, 384, 256)
    with pytest.raises(ValueError, match="AlexNet.image_size: must be >= 67"):
        jax.eval_shape(lambda v: AlexNet(image_size=63).init(jax.random.key(0), v),
                       jax.ShapeDtypeStruct((1, 63, 63, 3), jnp.float32))
    with pytest.raises(ValueError, match="67, 67, 3"):
        jax.eval_shape(lambda v: AlexNet(image_size=67).init(jax.random.key(0), v),
                       jax.ShapeDtypeStruct((1, 227, 227, 3), jnp.float32))
