"""nlnoise: training image classifiers on noisy labels with a constrained linear noise layer.

Q convention everywhere: ``q[j, i] = p(noisy = j | true = i)``, shape ``[K_noisy, K_true]``,
columns sum to 1 (column-stochastic), as in Sukhbaatar et al. and cleanlab.
"""

__version__ = "0.1.0"
