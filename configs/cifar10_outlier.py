"""CIFAR-10 outlier noise (section 4.3), open-set protocol: classes 0-4 are the inliers.

Outliers are images of classes 5-9, each given a uniformly random inlier label (N_out), plus
N_known outliers labelled K (the outlier class). The outlier model fixes Q to Eqn 9 with
alpha = N_known / (N_known + N_out) from the counts (``alpha_scale`` perturbs it, e.g. 0.85 /
1.15 for the paper's +-15%). The normal model (``model=none``) trains on the same inliers and
unlabelled outliers, without the known outliers, and scores outliers by softmax entropy.
Variants: ``ratio=1.0`` (N_out / N_in), ``model=none``, ``alpha_scale=1.15``, ``size=10000``.
"""

from nlnoise.config import base_config, finalize


def runlocal(c):
    c.dataset.train_size = 1000
    c.dataset.num_outliers = 1000
    c.dataset.num_known_outliers = 200
    c.dataset.num_test_examples = 1000
    c.dataset.num_test_outliers = 1000
    c.num_epochs = 2
    c.batch_size = 100


def get_config(arg: str | None = None):
    c = base_config()
    c.dataset.name = "cifar10"
    c.dataset.source = "local"
    c.dataset.pixel_scale = 1.0
    c.dataset.inlier_classes = (0, 1, 2, 3, 4)
    c.dataset.train_size = 25_000
    c.dataset.num_known_outliers = 2_500
    c.model.name = "layers18pct"
    c.noise.model = "outlier"
    c.corruption.kind = "identity"
    c.corruption.level = 0.0
    c.num_epochs = 100
    c.learning_rate = 0.001
    c.weight_decay = 0.004
    c.layer_weight_decay = {"fc10": 1.0}
    c.bias_lr_scale = 2.0  # layer-params-18pct: epsB = 2 * epsW
    return finalize(c, arg, runlocal, derived={"ratio": (1.0, _outliers)})


def _outliers(c, ratio, variants):
    # N_out follows the final training-set size, unless set outright.
    if "dataset.num_outliers" not in variants:
        c.dataset.num_outliers = round(float(ratio) * c.dataset.train_size)
    if c.noise.model == "none":  # the normal model has no outlier class to label them with
        c.dataset.num_known_outliers = 0
