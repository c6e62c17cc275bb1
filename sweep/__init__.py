"""Ray Tune sweeps searched by Optuna: ``python -m sweep``. The only package that imports Ray.

Public API: :func:`run_sweep` (argv list -> experiment folder), :class:`UsageError`; Ray is imported only when
a sweep starts, so ``import sweep`` stays light.
"""

from .cli import UsageError, run_sweep

__all__ = ["run_sweep", "UsageError"]
