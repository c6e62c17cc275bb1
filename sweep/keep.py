"""``--keep-models chosen``: when a sweep ends, the final models of the chosen configurations stay and the rest
are deleted (each ok trial writes its model as it finishes: which configuration is chosen is known only at the
end). Chosen means what the report and ``python -m analysis export`` mean: the shared rule
(results.selection, DESIGN rule 15) at each arch, method and comparison level, on validation accuracy."""

from __future__ import annotations

from results import files, schema

__all__ = ["keep_chosen_models"]


def keep_chosen_models(experiment: str) -> tuple[int, int]:
    """Delete every model file of ``experiment`` except the chosen configurations' seeds; (kept, deleted)."""
    from analysis.load import ExperimentError, sweep_trials
    from analysis.tables import annotate, chosen_at_every_level

    try:
        trials = sweep_trials(experiment)
    except ExperimentError:
        return 0, 0  # no results yet: nothing to keep or delete
    if trials.empty:
        return 0, 0
    rows = annotate(trials)
    best = chosen_at_every_level(trials)
    # every row of a chosen configuration keeps its model: its tuning seeds and its confirmation seeds
    chosen = set(rows.merge(best[["arch", "method", "config"]].drop_duplicates())["trial_id"])
    kept = deleted = 0
    for _, row in rows[rows["status"] == "ok"].iterrows():
        rel = schema.model_path(arch=row["arch"], method=row["method"], trial_id=row["trial_id"])
        if not files.exists(experiment, rel):
            continue
        if row["trial_id"] in chosen:
            kept += 1
        else:
            files.delete(experiment, rel)
            deleted += 1
    return kept, deleted
