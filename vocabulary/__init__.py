"""The vocabulary every package stands on: what a trial's configuration is (``vocabulary.config``) and which
pruning methods and sparsity sets exist, what each reads and reports (``vocabulary.registry``).

Torch-free, Ray-free and pandas-free, so trainables, results, sweep and analysis all import it and nothing
here imports them:

    vocabulary <- trainables -> results <- analysis <- sweep   (sweep also drives trainables; all use vocabulary)
"""

__all__ = ["config", "registry"]  # the modules other packages use (``from vocabulary import config, registry``)
