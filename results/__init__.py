"""The results of a sweep as files: where they live (``files``: local folders and object-store URIs, one
atomic write) and what they hold (``schema``: tables, columns, types, version). Imports neither torch nor Ray,
so trainables writes, sweep drives and analysis reads through the same two small modules (``files``, ``schema``):

    trainables -> results <- analysis        (sweep hands trainables' results to results)
"""

__all__ = ["files", "schema"]  # the modules other packages use (``from results import files, schema``)
