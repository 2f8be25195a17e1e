"""Fashion-MNIST (Debian's dataset-fashion-mnist) with the paper's CIFAR network.

Variants: ``configs/fashion_mnist.py:noise=0.5,model=learned``; ``runlocal`` for a tiny real
run (seconds); short names are listed in ``nlnoise.config.ALIASES``. Not a dataset of the paper:
its schedule is ours, chosen to fit a small CPU budget (Q frozen for the first third of training).
"""

from nlnoise.config import base_config, finalize


def runlocal(c):
    c.dataset.train_size = 2000
    c.num_epochs = 3
    c.q.freeze_epochs = 1
    c.batch_size = 100
    c.dataset.num_test_examples = 2000
    c.dataset.val_size = 200
    c.log_every_steps = 10


def get_config(arg: str | None = None):
    c = base_config()
    c.dataset.name = "fashion_mnist"
    c.dataset.source = "local"
    c.model.name = "layers18pct"
    c.noise.model = "learned"
    c.corruption.kind = "paper_random"
    c.corruption.level = 0.5
    c.dataset.pixel_scale = 1.0  # raw 0..255 units minus the mean, as cuda-convnet
    c.num_epochs = 5
    c.q.freeze_epochs = 2
    c.batch_size = 128
    c.learning_rate = 0.01
    c.momentum = 0.9
    c.weight_decay = 0.004
    c.layer_weight_decay = {}
    c.q.learning_rate = 0.01
    # The main job: 30k of the 60k training images, so that it takes minutes on a CPU; 3k of
    # them are held out with their noisy labels for label-free early stopping (summary "best").
    c.dataset.train_size = 30_000
    c.dataset.val_size = 3_000
    return finalize(c, arg, runlocal)
