"""Measurement tools, kept apart from the library they measure (trainables holds what a trial runs, sweep
what drives trials). Nothing here runs at import. The 2:4 inference code it times lives in
trainables.semistructured (a trial measures its own 2:4 latency on a capable GPU).

``python -m bench [--device cuda --json PATH]``   speed figures of a trial's loop beside their targets (cli)
``python -m bench.sweep``                        share of a sweep's wall time spent inside its trials (sweep)

Modules, in dependency order: ``rig`` (one trial's model, data and loop set up as a trial sets them up),
``cpu`` (the CPU figures), ``measure`` (the CUDA
measurements and the seed experiment's GPU-hours), ``workers`` (packed trials and torch.compile in processes
of their own), ``cuda`` (every CUDA figure, one function per section), ``cli``, ``sweep``.
"""
