"""``nlnoise-train`` that announces its loop phases on stderr, for fault injection.

    python bench/traced_train.py --config=configs/digits.py:runlocal --workdir=/tmp/x [...]

Same flags and behaviour as ``nlnoise-train``; it passes ``nlnoise.run.train_and_evaluate`` an
``on_phase`` callback that prints ``nlnoise-phase: <name> step=<n>`` lines (every 5th training
step, every evaluation, every checkpoint write). ``bench/soak_preemption.py`` runs it as the
process it kills, and reads these lines to pick its moments.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This checkout's nlnoise, as `python -m nlnoise.main` from the repository would run it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nlnoise import main

# Training steps between two "train" announcements: frequent enough to land kills mid-step,
# few enough that reading stderr never paces the loop.
TRAIN_EVERY = 5


def announce(name: str, step: int) -> None:
    """Prints one phase line (flushed: the reader acts on it while the run continues)."""
    if name != "train" or step % TRAIN_EVERY == 0:
        print(f"nlnoise-phase: {name} step={step}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main.run(on_phase=announce)
