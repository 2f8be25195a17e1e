"""Named grids of the reproductions in docs/results.md: ``nlnoise-sweep --grid=NAME``.

Each sweep names a config file, the variant applied to every cell (``base``), the cells (a
``{key: [values]}`` product, or a list of variant strings) and the directory its cells live in,
under ``--root``. Sweeps of one dataset share that directory and spell their cells with the
same keys in the same order, so a cell two sweeps have in common (e.g. 60k images at 50% noise
is in both the noise and the size sweep) is trained once. ``{root}`` in a variant string is
replaced by that directory, which lets a cell read an earlier cell's output; a
``(name, variant)`` pair names a cell's directory explicitly.

Schedules are shortened to fit a 2-core CPU (docs/results.md says what the paper used):
Fashion-MNIST 5 epochs with Q frozen for the first 2; CIFAR-10 8 epochs, Q frozen for 3.
"""

MODELS = ["none", "learned", "true"]
FASHION = "configs/fashion_mnist.py"
CIFAR = "configs/cifar10.py"
CIFAR_OUTLIER = "configs/cifar10_outlier.py"
# These cells were run before noise.q_grad_clip existed (default 10 since 2026-11-25) and before
# the lower_on_plateau decay rule (the default since 2026-11-29), so the sweeps pin the recipe
# they ran with; fashion_recipe's clip10 cells show the clip.
RULE = "noise.q_decay_rule='lower_on_rise',noise.q_decay_tolerance=0.0"
LEGACY = "noise.q_grad_clip=0.0," + RULE
FASHION_BASE = "epochs=5,freeze=2," + LEGACY
# Long enough for the plain model to start fitting the flipped labels (docs/results.md,
# section 7): 10k images, 40 epochs, Q frozen for the first 10; the default recipe. The _val
# sweep holds 1000 of the 10k out as a noisy validation split (label-free model selection).
FASHION_LONG_BASE = "size=10000,epochs=40,freeze=10,eval_every_epochs=2.0"
FASHION_LONG_VAL_BASE = FASHION_LONG_BASE + ",dataset.val_size=1000"
# lr 0.003: on 10k clean CIFAR images, 2 epochs reached 63.2% test error at 0.003 and 72.6%
# at 0.01 (measured 2026-11-25), so the shortened schedule uses the faster starter.
CIFAR_BASE = "epochs=8,freeze=3,lr=0.003"
# The same 8 epochs with the learning rate cut 10x for the last one, as the paper's schedule
# ends (cuda-convnet's drops): at a constant rate the test error swings by 3-6 points from epoch
# to epoch, more than most none/learned/true differences in cifar_noise.
CIFAR_ANNEAL_BASE = CIFAR_BASE + ",lr_boundaries_epochs=(7,)"
# fashion_long_val's schedule on CIFAR-10 (10k images, 1000 held out, 40 epochs, Q frozen for
# 10): the same 3,120 steps as cifar_noise, spent on fewer images so the plain model can start
# fitting the flips.
CIFAR_LONG_VAL_BASE = "lr=0.003," + FASHION_LONG_VAL_BASE
# The clean model whose test confusion matrix makes the adversarial Q* (paper Table 1b).
CLEAN_FASHION = "size=60000,noise=0.0,model='none'"


def _adversarial(level: float) -> list[str]:
    confusion = "{root}/size-60000__noise-0.0__model-none/summary.json"
    return [(f"size=60000,kind=adversarial,noise={level},model={m}",
             f"size=60000,kind='adversarial',noise={level},model='{m}',"
             f"noise.confusion_path='{confusion}'") for m in MODELS]


def get_sweeps() -> dict[str, dict]:
    """``{name: {"config", "dir", "base", "grid", "x", "doc"}}``; ``x`` is the plotted key."""
    return {
        "fashion_noise": {
            "config": FASHION, "dir": "fashion", "base": FASHION_BASE, "x": "noise_level",
            # 50% and 70% first: the levels with targets.
            "grid": {"size": [60000], "noise": [0.5, 0.7, 0.3, 0.0, 0.8], "model": MODELS},
            "doc": "Fig. 3b/4: clean test error against the paper-random flip level.",
        },
        "fashion_size": {
            "config": FASHION, "dir": "fashion", "base": FASHION_BASE, "x": "train_size",
            "grid": {"size": [10000, 30000, 60000], "noise": [0.5], "model": MODELS},
            "doc": "Fig. 3a: clean test error against training-set size at 50% noise.",
        },
        "fashion_structured": {
            "config": FASHION, "dir": "fashion", "base": FASHION_BASE, "x": "noise_kind",
            "grid": [CLEAN_FASHION, *_adversarial(0.4),
                     *[f"size=60000,kind='sparse_random',noise=0.5,model='{m}',noise.m=3"
                       for m in MODELS]],
            "doc": "Table 1: adversarial flips at 40% (from the clean model's confusion) and "
                   "sparse random flips at 50% over m=3 other classes.",
        },
        "fashion_recipe": {
            "config": FASHION, "dir": "fashion", "base": FASHION_BASE, "x": "noise_kind",
            # Variants of the learned-Q recipe against the default's cells of fashion_structured
            # and fashion_noise: Q's gradient clipped (noise.q_grad_clip); Q started from the
            # network's confusion at the end of the freeze (noise.q_init=confusion, noisy labels
            # only) under 10x less decay.
            "grid": [(f"{name},recipe={recipe}", f"{variant},{extra}")
                     for recipe, extra in (
                         ("clip10", "noise.q_grad_clip=10.0"),
                         ("confusion", "noise.q_init='confusion',noise.q_weight_decay=0.01"))
                     for name, variant in (
                         _adversarial(0.4)[1],
                         ("size=60000,noise=0.5,model=learned",
                          "size=60000,noise=0.5,model='learned'"))]
                    + [(f"{name},recipe=clip10", f"{variant},noise.q_grad_clip=10.0")
                       for name, variant in (
                           ("size=10000,noise=0.5,model=learned",
                            "size=10000,noise=0.5,model='learned'"),
                           ("size=60000,noise=0.7,model=learned",
                            "size=60000,noise=0.7,model='learned'"),
                           ("size=60000,noise=0.3,model=learned",
                            "size=60000,noise=0.3,model='learned'"),
                           ("size=60000,kind=sparse_random,noise=0.5,model=learned,m=3",
                            "size=60000,kind='sparse_random',noise=0.5,model='learned',"
                            "noise.m=3"),
                           # fashion_noise's unclipped learned Q collapsed at level 0 (and
                           # failed at 0.8); the default recipe at both ends of the sweep.
                           ("size=60000,noise=0.0,model=learned",
                            "size=60000,noise=0.0,model='learned'"),
                           ("size=60000,noise=0.8,model=learned",
                            "size=60000,noise=0.8,model='learned'"))],
            "doc": "The learned-Q recipe on adversarial 40% and paper-random 50% flips: Q's "
                   "gradient clipped to norm 10; confusion start with decay 0.01.",
        },
        "fashion_decay": {
            # The decay on Q (docs/results.md, "The decay on Q"): 30k images, 12 epochs (Q frozen
            # for 3), the decay rule of the time (lower_on_rise) unless the cell says otherwise.
            "config": FASHION, "dir": "fashion_decay", "base": "epochs=12,freeze=3," + RULE,
            "x": "noise_level",
            "grid": [
                ("model=none", "model='none'"),
                ("model=true", "model='true'"),
                ("model=learned,q_wd=0.1", "model='learned'"),
                ("model=learned,q_wd=0.01", "model='learned',q_wd=0.01"),
                # The paper's 0.1 against the batch-summed gradient: 0.1 / 128.
                ("model=learned,q_wd=0.00078125", "model='learned',q_wd=0.00078125"),
                # ... and its learning rate for Q too (epsW=0.001 on the summed gradient).
                ("model=learned,q_wd=0.00078125,q_lr=0.128",
                 "model='learned',q_wd=0.00078125,noise.q_learning_rate=0.128"),
                # The default recipe since 2026-11-29 (lower_on_plateau, 1% rise tolerance).
                ("model=learned,q_wd=0.1,rule=plateau,epochs=20",
                 "model='learned',epochs=20,noise.q_decay_rule='lower_on_plateau',"
                 "noise.q_decay_tolerance=0.01"),
                ("size=60000,model=learned,q_wd=0.1", "size=60000,model='learned'"),
            ],
            "doc": "The decay on Q at 50% flips: its strength (mean-loss 0.1 / 0.01 / the "
                   "paper's 0.1/128), Q's learning rate, and the lower_on_plateau rule.",
        },
        "fashion_clean": {
            # Learned Q without noise: the 5-epoch cell ended 2.7 points behind none (the decay
            # diffuses Q when there is nothing to model). fashion_decay's plateau-cell schedule
            # (30k, 20 epochs, Q frozen for 3) with the default recipe, so the rule can act.
            "config": FASHION, "dir": "fashion_clean", "base": "noise=0.0,epochs=20,freeze=3",
            "x": "noise_level",
            "grid": {"model": ["none", "learned"]},
            "doc": "Learned Q on clean labels (30k, 20 epochs, default recipe) against none.",
        },
        "fashion_long": {
            "config": FASHION, "dir": "fashion_long", "base": FASHION_LONG_BASE,
            "x": "noise_level",
            "grid": {"noise": [0.5], "model": MODELS},
            "doc": "Fig. 3b at a schedule where the plain model memorises: 10k images, 40 "
                   "epochs (Q frozen for 10), the default learned-Q recipe.",
        },
        "fashion_long_val": {
            "config": FASHION, "dir": "fashion_long_val", "base": FASHION_LONG_VAL_BASE,
            "x": "noise_level",
            # The default recipe (lower_on_plateau) and, beside it, the paper's constant decay.
            "grid": [f"noise={n},model='{m}'" for n in (0.5, 0.7) for m in MODELS]
                    + [(f"noise={n},model=learned,rule=constant",
                        f"noise={n},model='learned',noise.q_decay_rule='constant'")
                       for n in (0.5, 0.7)],
            "doc": "fashion_long with 1000 of the 10k images held out (noisy labels): every "
                   "model also reported at the evaluation with the lowest held-out noisy loss; "
                   "learned Q also with the paper's constant decay.",
        },
        "cifar_noise": {
            "config": CIFAR, "dir": "cifar10", "base": CIFAR_BASE, "x": "noise_level",
            "grid": {"noise": [0.5, 0.3, 0.7], "model": MODELS},
            "doc": "Fig. 4: CIFAR-10, clean test error against the paper-random flip level.",
        },
        "cifar_noise_anneal": {
            "config": CIFAR, "dir": "cifar10_anneal", "base": CIFAR_ANNEAL_BASE,
            "x": "noise_level",
            "grid": {"noise": [0.3, 0.7, 0.5], "model": MODELS},
            "doc": "cifar_noise with the learning rate cut 10x for the last of the 8 epochs.",
        },
        "cifar_long_val": {
            "config": CIFAR, "dir": "cifar10_long_val", "base": CIFAR_LONG_VAL_BASE,
            "x": "noise_level",
            "grid": {"noise": [0.5, 0.7], "model": MODELS},
            "doc": "fashion_long_val's schedule on CIFAR-10: 10k images (1000 held out, noisy), "
                   "40 epochs, Q frozen for 10; none/learned/true at 50% and 70%.",
        },
        "cifar_outlier": {
            # LEGACY: started before the key existed (it has no effect on none/outlier models).
            "config": CIFAR_OUTLIER, "dir": "cifar10_outlier",
            "base": CIFAR_BASE + ",size=10000," + LEGACY,
            "x": "outlier_ratio",
            # none against outlier at every ratio first, then the alpha perturbations.
            "grid": [f"ratio={r},model='{m}'" for r in (1.0, 0.5, 2.0)
                     for m in ("none", "outlier")]
                    + [f"ratio={r},model='outlier',alpha_scale={a}" for r in (1.0, 0.5, 2.0)
                       for a in (0.85, 1.15)],
            "doc": "Fig. 5/6: open-set outliers (classes 5-9 into inliers 0-4) at N_out/N_in "
                   "0.5, 1, 2; outlier model with alpha from the counts and +-15%.",
        },
        "cifar_outlier_size": {
            # The paper's "the outlier model helps most for small training sets": N_in of
            # 2500 and 5000 at N_out/N_in = 1; the 10000 cells are cifar_outlier's (same config,
            # same name, so they are read, not rerun).
            "config": CIFAR_OUTLIER, "dir": "cifar10_outlier", "base": CIFAR_BASE + "," + LEGACY,
            "x": "train_size",
            "grid": [(f"size={n},ratio=1.0,model={m}" if n != 10000 else
                      f"ratio=1.0,model={m}", f"size={n},ratio=1.0,model='{m}'")
                     for n in (2500, 5000, 10000) for m in ("none", "outlier")],
            "doc": "Fig. 5: open-set outliers at N_out/N_in = 1 against the number of inliers "
                   "(2500, 5000, 10000); none against outlier.",
        },
    }
