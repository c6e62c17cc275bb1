"""The built-in sparsity sets, one module each (the shape of trainables/methods/): ``base.py`` holds what every
set shares (the SparsitySet contract, the tie rule), ``uniform.py``, ``global_.py`` and ``nm.py`` one set
each, their maker exported as ``SET``.

A set is its module (anywhere importable: a newcomer's may live outside this package) and its entry in
``vocabulary/registry.py`` SETS naming that module; ``trainables.sparsity.SETS`` resolves the entries. Import
the sets through ``trainables.sparsity`` (SparsitySet, UniformSet, GlobalSet, NMSet, SETS, sparsity_set).
"""

__all__: list[str] = []
