"""SVHN (TFDS ``svhn_cropped``) with layers-18pct and contrast normalization, as in the paper.

Section 4.2: Q fixed for the first 5 epochs, then 95 epochs with weight decay 0.1 on Q. The
training set is the paper's: ``train+extra`` (73,257 + 531,131 images).
Prepare the data once with ``tfds build svhn_cropped --data_dir=DIR --file_format=array_record``
(needs tensorflow and internet) and pass ``--config.dataset.data_dir=DIR``.
"""

from nlnoise.config import base_config, finalize


def runlocal(c):
    c.dataset.train_size = 1000
    c.dataset.num_test_examples = 1000
    c.num_epochs = 2
    c.q.freeze_epochs = 1
    c.batch_size = 100


def get_config(arg: str | None = None):
    c = base_config()
    c.dataset.name = "svhn_cropped"
    c.dataset.source = "tfds"
    c.dataset.train_split = "train+extra"
    c.dataset.contrast_normalization = True
    c.model.name = "layers18pct"
    c.num_epochs = 100
    c.q.freeze_epochs = 5
    c.q.weight_decay = 0.1
    c.learning_rate = 0.001
    c.weight_decay = 0.004
    c.layer_weight_decay = {"fc10": 1.0}
    c.bias_lr_scale = 2.0  # layer-params-18pct: epsB = 2 * epsW
    return finalize(c, arg, runlocal)
