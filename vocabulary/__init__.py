"""The vocabulary every package stands on: what a trial's configuration is (``vocabulary.config``).

Torch-free, Ray-free and pandas-free, so trainables, results, sweep and analysis all import it and nothing
here imports them:

    vocabulary <- trainables -> results <- analysis <- sweep   (sweep also drives trainables; all use vocabulary)
"""

__all__ = ["config"]  # the module other packages use (``from vocabulary import config``)
