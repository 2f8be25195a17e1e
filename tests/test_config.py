"""Config files, variants and validation (every bad value is named before anything runs)."""

import importlib.util
import pathlib

import pytest

from nlnoise import config

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def load(name: str, arg: str | None = None):
    spec = importlib.util.spec_from_file_location(name, CONFIGS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg)


@pytest.mark.parametrize(
    "name", ["fashion_mnist", "cifar10", "svhn", "imagenet_alexnet", "cifar10_outlier", "digits"]
)
def test_every_config_file_validates(name):
    cfg = load(name)
    config.validate(cfg, num_devices=8)
    for key in ("seed", "batch_size", "num_epochs", "learning_rate"):
        assert key in cfg
    for key in ("kind", "level", "seed", "m"):
        assert key in cfg.corruption
    for key in ("model", "alpha"):
        assert key in cfg.noise
    for key in ("freeze_epochs", "weight_decay", "learning_rate", "grad_clip", "decay_rule"):
        assert key in cfg.q
    assert "data" in cfg.mesh and "model" in cfg.mesh


def test_svhn_trains_on_train_plus_extra():
    # The paper's SVHN training set is train + extra (about 600k images).
    assert load("svhn").dataset.train_split == "train+extra"


def test_paper_schedules_are_the_defaults():
    assert load("cifar10").q.freeze_epochs == 30
    assert load("svhn").q.freeze_epochs == 5
    for name in ("cifar10", "svhn"):
        c = load(name)
        assert c.q.weight_decay == 0.1 and c.num_epochs == 100
        assert c.learning_rate == 0.001 and c.layer_weight_decay.fc10 == 1.0


def test_variants_and_runlocal():
    c = load("cifar10", "noise=0.3,model=learned,size=20000")
    assert (c.corruption.level, c.noise.model, c.dataset.train_size) == (0.3, "learned", 20000)
    r = load("fashion_mnist", "runlocal,noise=0.7")
    assert r.dataset.train_size <= 5000 and r.num_epochs <= 3 and r.corruption.level == 0.7
    o = load("cifar10_outlier", "ratio=2.0,model=none")
    assert o.dataset.num_outliers == 2 * o.dataset.train_size
    assert o.dataset.num_known_outliers == 0
    a = load("imagenet_alexnet", "outlier,mesh_model=4")
    assert a.noise.model == "outlier" and a.mesh.model == 4


def test_unknown_variant_key_is_rejected_with_valid_keys():
    with pytest.raises(config.ConfigError, match="noize"):
        load("cifar10", "noize=0.5")
    with pytest.raises(config.ConfigError, match=r"corruption\.levle.*valid keys"):
        load("cifar10", "corruption.levle=0.5")


def test_parse_variant_literals():
    assert config.parse_variant("a=0.5,b=learned,flag") == {"a": 0.5, "b": "learned",
                                                            "flag": True}
    assert config.parse_variant("") == {}


def test_variant_values_may_hold_commas():
    assert config.parse_variant("lr_boundaries_epochs=(6,7),net='a,b',x=[1,2],y=1") == {
        "lr_boundaries_epochs": (6, 7), "net": "a,b", "x": [1, 2], "y": 1}
    assert load("cifar10", "epochs=8,lr_boundaries_epochs=(6,7)").lr_boundaries_epochs == (6, 7)
    # One number for a tuple field is one boundary.
    assert load("cifar10", "lr_boundaries_epochs=7").lr_boundaries_epochs == (7,)
    assert load("imagenet_alexnet", "outlier,lr_boundaries_epochs=(20,30)"
                ).lr_boundaries_epochs == (20, 30)


BAD = [
    ("corruption.level", 1.5, "corruption.level"),
    ("corruption.level", -0.1, "corruption.level"),
    ("noise.alpha", 1.2, "noise.alpha"),
    ("noise.model", "oracle", "noise.model"),
    ("corruption.kind", "gaussian", "corruption.kind"),
    ("q.regularizer", "l1", "q.regularizer"),
    ("q.freeze_epochs", 500, "q.freeze_epochs"),
    ("q.freeze_epochs", 100, "q.freeze_epochs"),  # == num_epochs: Q would never be learned
    ("corruption.seed", -1, "corruption.seed"),
    ("corruption.kind", "block", "corruption.groups"),
    ("q.weight_decay", -1.0, "q.weight_decay"),
    ("q.learning_rate", 0.0, "q.learning_rate"),
    ("q.decay_rule", "cosine", "q.decay_rule"),
    ("q.plateau_tolerance", -0.1, "q.plateau_tolerance"),
    ("batch_size", 0, "batch_size"),
    ("batch_size", 100, "batch_size"),  # not divisible by 8 devices
    ("dataset.eval_batch_size", 0, "dataset.eval_batch_size"),
    ("dataset.eval_batch_size", 500, "dataset.eval_batch_size"),  # not divisible by 8
    ("learning_rate", 0.0, "learning_rate"),
    ("momentum", 1.0, "momentum"),
    ("num_epochs", 0, "num_epochs"),
    ("model.name", "resnet", "model.name"),
    ("mesh.model", 3, "mesh.model"),
    ("mesh.data", 16, "mesh"),
    ("mesh.cpu_devices", -2, "mesh.cpu_devices"),
    ("keep_checkpoints", 0, "keep_checkpoints"),
    ("lr_boundaries_epochs", (60, 30), "lr_boundaries_epochs"),
    ("eval_every_epochs", 0.0, "eval_every_epochs"),
]


@pytest.mark.parametrize(("field", "value", "named"), BAD)
def test_bad_values_are_rejected_naming_the_field(field, value, named):
    cfg = load("cifar10")
    config.set_path(cfg, field, value)
    with pytest.raises(config.ConfigError, match=named.replace(".", r"\.")):
        config.validate(cfg, num_devices=8)


def test_one_seed_varies_flips_and_subsets_unless_they_are_pinned():
    c = load("fashion_mnist", "seed=3")
    assert c.seed == 3 and c.corruption.seed is None and c.dataset.subset_seed is None
    pinned = load("fashion_mnist", "seed=3,corruption.seed=0")
    assert pinned.corruption.seed == 0


def test_presets_and_derived_variants():
    a = load("imagenet_alexnet", "outlier,mesh_model=4,alpha=0.1")
    assert (a.noise.model, a.mesh.model, a.noise.alpha) == ("outlier", 4, 0.1)
    assert a.dataset.num_known_outliers == 20_000
    o = load("cifar10_outlier", "size=4000,ratio=0.5")
    assert o.dataset.num_outliers == 2000
    o = load("cifar10_outlier", "size=4000,ratio=0.5,dataset.num_outliers=7")
    assert o.dataset.num_outliers == 7


def test_freeze_is_only_checked_for_learned_q():
    cfg = load("cifar10", "model=none,epochs=8")
    config.validate(cfg, num_devices=8)  # freeze 30 > 8 epochs: irrelevant without learned Q


def test_wrong_type_is_rejected():
    cfg = load("cifar10")
    with pytest.raises(config.ConfigError, match="learning_rate"):
        config.set_path(cfg, "learning_rate", "fast")
    cfg.batch_size = 128
    cfg.noise.model = "outlier"
    with pytest.raises(config.ConfigError, match="noise.alpha"):
        config.validate(cfg, num_devices=8)


def test_adversarial_needs_a_confusion_matrix():
    cfg = load("cifar10", "kind=adversarial")
    with pytest.raises(config.ConfigError, match="confusion_path"):
        config.validate(cfg, num_devices=1)
