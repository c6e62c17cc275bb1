"""Ray Tune sweeps searched by Optuna: ``python -m sweep``. The only package that imports Ray."""
