"""Training code for one pruning trial: models, data, sparsity sets, methods and the training loop.

Nothing here imports Ray. Importing the package imports nothing heavy; use the submodules.
"""
