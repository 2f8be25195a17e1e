"""CIFAR-10 (the JPEG copy in ../shared/data, or TFDS) with cuda-convnet's layers-18pct network.

The paper's schedule (section 4.2): Q fixed to the identity for 30 epochs, then 70 epochs with
weight decay 0.1 on Q. cuda-convnet's layer-params-18pct: epsW 0.001, momentum 0.9, weight cost
0.004 on the convolutions and 1 on fc10, raw 0..255 pixels minus the mean; learning rates drop
10x after 120 and 130 epochs (beyond these 100 epochs). Variants: ``noise=0.5,model=learned``,
``size=20000``, ``runlocal``.
"""

from nlnoise.config import base_config, finalize


def runlocal(c):
    c.dataset.train_size = 1000
    c.dataset.num_test_examples = 1000
    c.num_epochs = 2
    c.q.freeze_epochs = 1
    c.batch_size = 100
    c.log_every_steps = 5


def get_config(arg: str | None = None):
    c = base_config()
    c.dataset.name = "cifar10"
    c.dataset.source = "local"
    c.dataset.pixel_scale = 1.0
    c.model.name = "layers18pct"
    c.num_epochs = 100
    c.q.freeze_epochs = 30
    c.q.weight_decay = 0.1
    c.learning_rate = 0.001
    c.momentum = 0.9
    c.weight_decay = 0.004
    c.layer_weight_decay = {"fc10": 1.0}
    c.bias_lr_scale = 2.0  # layer-params-18pct: epsB = 2 * epsW
    c.lr_boundaries_epochs = (120, 130)
    return finalize(c, arg, runlocal)
