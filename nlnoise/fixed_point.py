"""Where a constant decay holds Q: the fixed point of the paper's Q step for a perfect network.

See :func:`decay_fixed_point`; :mod:`nlnoise.optim` explains the trade-off it shows.
"""

from __future__ import annotations

import numpy as np

from nlnoise.noise import validate_transition


def decay_fixed_point(
    q_star: np.ndarray,
    strength: float,
    *,
    class_prior: np.ndarray | None = None,
    regularizer: str = "weight_decay",
) -> np.ndarray:
    """Where the regularizer leaves learned Q when the network is perfect (``C = I``).

    With ``p(true | x)`` one-hot and labels drawn from ``Q*`` (``[K_noisy, K_true]``), the
    expected mean loss plus regularizer separates by column: column ``i`` of the learned Q
    minimises ``-prior_i * sum_j Q*[j, i] log q_j + strength * R(q)`` on the simplex, with
    ``R(q) = ||q||^2 / 2`` (``"weight_decay"``) or ``q_i`` (``"trace"``). ``strength`` is in
    the mean-loss convention of :func:`q_optimizer`. The answer is ``Q*`` at strength 0 and
    more diffuse above it: the bias the decay leaves even once the network is clean, which
    grows with ``strength / prior_i`` (so with K). Solved exactly per column by bisection on
    the Lagrange multiplier of ``sum q = 1``; float64.
    """
    q_star = validate_transition(q_star, name="q_star")
    k_noisy, k_true = q_star.shape
    if strength < 0:
        raise ValueError(f"strength: must be >= 0, got {strength}.")
    from nlnoise.optim import check_regularizer  # optim re-exports this module's function

    check_regularizer(regularizer, field="regularizer")
    prior = (np.full(k_true, 1.0 / k_true) if class_prior is None
             else np.asarray(class_prior, np.float64))
    if prior.shape != (k_true,) or (prior < 0).any() or not np.isclose(prior.sum(), 1.0):
        raise ValueError(f"class_prior: must be {k_true} non-negative numbers summing to 1.")
    if strength == 0:
        return q_star.copy()
    out = np.zeros_like(q_star)
    for i in range(k_true):
        a = prior[i] * q_star[:, i]  # the data term's weight on log q_j

        if regularizer == "weight_decay":
            # Stationarity -a_j / q_j + s q_j = nu  =>  q_j = (nu + sqrt(nu^2 + 4 s a_j)) / 2s.
            def col(nu, a=a):
                return (nu + np.sqrt(nu * nu + 4 * strength * a)) / (2 * strength)
            lo, hi = -1.0, strength
            while col(lo).sum() > 1:
                lo *= 2
        else:
            off = a.copy()
            if i < k_noisy:
                off[i] = 0.0
            if not off.any():  # nothing flips out of class i: the trace cannot move it
                out[:, i] = q_star[:, i]
                continue

            # -a_j / q_j + s [j == i] = nu (nu < 0)  =>  q_j = a_j / (s [j == i] - nu).
            def col(nu, a=a, i=i):
                d = -nu * np.ones_like(a)
                if i < k_noisy:
                    d[i] += strength
                return a / d
            lo, hi = -1.0, 0.0
            while col(lo).sum() > 1:
                lo *= 2
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            if col(mid).sum() > 1:
                hi = mid
            else:
                lo = mid
        q = col(0.5 * (lo + hi))
        out[:, i] = q / q.sum()
    return out
