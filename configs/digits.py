"""scikit-learn's digits (1,797 real 8x8 images) with a small MLP: seconds per run.

For tests, notebooks and quick ablations. Variants as elsewhere (``noise=0.5,model=learned``);
``runlocal`` shortens it further.
"""

from nlnoise.config import base_config, finalize


def runlocal(c):
    c.num_epochs = 10
    c.q.freeze_epochs = 3


def get_config(arg: str | None = None):
    c = base_config()
    c.dataset.name = "digits"
    c.dataset.source = "local"
    c.dataset.eval_batch_size = 200
    c.model.name = "mlp"
    c.batch_size = 64
    c.num_epochs = 30
    c.learning_rate = 0.1
    c.momentum = 0.9
    c.weight_decay = 5e-4
    c.layer_weight_decay = {}
    c.corruption.kind = "paper_random"
    c.corruption.level = 0.5
    c.q.freeze_epochs = 10
    c.q.learning_rate = 0.05
    c.log_every_steps = 10
    return finalize(c, arg, runlocal)
