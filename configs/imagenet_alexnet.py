"""ImageNet 2012 with AlexNet (Krizhevsky et al. 2012), for a TPU pod (see launch/tpu_pod.sh).

The paper's ImageNet experiments: 50% "random" flips (each class keeps 50%, the rest over 10
random classes: ``kind=sparse_random``) or 40% "adversarial" flips from a clean model's
confusion matrix (``kind=adversarial``, ``corruption.confusion_path``), models none/learned/true;
and outliers (``configs/imagenet_alexnet.py:outlier``). The paper does not give AlexNet's Q
schedule; we keep Q frozen for the first 30 of 90 epochs. Network hyper-parameters follow
Krizhevsky et al.: batch 128, SGD momentum 0.9, lr 0.01 dropped 10x at epochs 30 and 60, weight
decay 5e-4, random 227x227 crops and flips. ``batch_size`` is global (split over the pod's
devices); a larger pod batch needs the learning rate scaled with it (Goyal et al. 2017 scale
it linearly: ``lr=0.04`` at ``batch_size=512``). Q's rate follows the network's unless
``q.learning_rate`` is set. Prepare the data with ``tfds build imagenet2012
--manual_dir=... --data_dir=gs://BUCKET/tfds``. Variants: ``noise=0.5,model=learned``,
``kind=adversarial``, ``mesh_model=4`` (shards fc6-8 and Q), ``runlocal`` (needs the data).
"""

from nlnoise.config import base_config, finalize


def runlocal(c):
    c.dataset.train_size = 256
    c.dataset.num_test_examples = 256
    c.num_epochs = 1
    c.q.freeze_epochs = 0
    c.batch_size = 32


def outlier(c):
    """Section 4.3: N_in = 0.6M inliers, N_out outliers with random labels, 20k known outliers.
    The open-set protocol stands in for ImageNet Fall 2011: classes 500-999 are the pool."""
    c.noise.model = "outlier"
    c.corruption.level = 0.0
    c.corruption.kind = "identity"
    c.dataset.inlier_classes = tuple(range(500))
    c.dataset.num_outliers = 600_000
    c.dataset.num_known_outliers = 20_000


def get_config(arg: str | None = None):
    c = base_config()
    c.dataset.name = "imagenet2012"
    c.dataset.source = "tfds"
    c.dataset.test_split = "validation"
    c.dataset.image_size = 227
    c.model.name = "alexnet"
    c.batch_size = 128
    c.num_epochs = 90
    c.learning_rate = 0.01
    c.momentum = 0.9
    c.weight_decay = 5e-4
    c.layer_weight_decay = {}
    c.lr_boundaries_epochs = (30, 60)
    c.corruption.kind = "sparse_random"
    c.corruption.level = 0.5
    c.corruption.m = 10
    c.q.freeze_epochs = 30
    c.q.weight_decay = 0.1
    c.eval_every_epochs = 5
    c.checkpoint_every_steps = 2000
    return finalize(c, arg, runlocal, presets={"outlier": outlier})
