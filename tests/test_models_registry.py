"""The model registry: names, errors that name the config field, input sizes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nlnoise import models


def test_models_lists_every_network():
    assert models.MODELS == ("layers18pct", "alexnet", "tiny_cnn", "mlp")


@pytest.mark.parametrize("name,cls", [
    ("layers18pct", models.Layers18pct), ("alexnet", models.AlexNet),
    ("tiny_cnn", models.TinyCNN), ("mlp", models.MLP),
])
def test_every_model_builds_and_gives_num_classes_logits(name, cls):
    model = models.get_model(name, 11)
    assert isinstance(model, cls) and model.num_classes == 11
    shape = models.input_shape(name) or (32, 32, 3)
    x = jax.ShapeDtypeStruct((2, *shape), jnp.float32)

    def forward(v):
        variables = model.init(jax.random.key(0, impl="rbg"), v)
        assert set(variables) == {"params"}  # no batch statistics or other mutable state
        return model.apply(variables, v, train=True, rngs={"dropout": jax.random.PRNGKey(1)})

    out = jax.eval_shape(forward, x)
    assert out.shape == (2, 11) and out.dtype == jnp.float32


def test_unknown_name_names_the_field_and_the_choices():
    with pytest.raises(ValueError, match="model.name") as err:
        models.get_model("resnet50", 10)
    for name in models.MODELS:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="model.name"):
        models.input_shape("resnet50")


@pytest.mark.parametrize("bad", [0, -3, 2.5, "10", True, None])
def test_bad_num_classes_names_the_field(bad):
    with pytest.raises(ValueError, match="model.num_classes"):
        models.get_model("mlp", bad)


def test_numpy_integer_num_classes_is_accepted():
    assert models.get_model("tiny_cnn", np.int64(4)).num_classes == 4


def test_unknown_setting_names_the_field_and_the_valid_ones():
    with pytest.raises(ValueError, match=r"model\.hiden.*hidden"):
        models.get_model("mlp", 3, hiden=(4,))
    with pytest.raises(ValueError, match="model.num_layers"):
        models.get_model("layers18pct", 3, num_layers=4)


def test_settings_are_passed_and_lists_become_tuples():
    model = models.get_model("mlp", 3, hidden=[8, 4])
    assert model.hidden == (8, 4)
    assert models.get_model("alexnet", 5, dropout_rate=0.1).dropout_rate == 0.1


def test_input_shape():
    assert models.input_shape("alexnet") == (227, 227, 3)
    for name in ("layers18pct", "tiny_cnn", "mlp"):
        assert models.input_shape(name) is None
