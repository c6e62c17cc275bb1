"""From a sweep's Parquet results to tables, figures and a report. Imports neither torch nor Ray.

Import-light: submodules (pandas, matplotlib, scipy) load on first attribute access, so
``import analysis`` is instant and ``python -m analysis`` pays only for what it uses.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "load_tables": "load", "Tables": "load", "ExperimentError": "load", "require_finished": "load",
    "find_optuna_storage": "load", "read_sweep_options": "load",
    "comparison_table": "tables", "best_hyperparameters": "tables", "pareto_front": "tables",
    "paired_comparison": "tables", "accounting": "tables", "diverged_trials": "tables",
    "best_configs": "tables", "config_summary": "tables", "config_key": "tables", "comparison_level": "tables",
    "control_accuracies": "tables", "fixed_hyperparameters": "tables", "config_settings": "tables",
    "DEFAULT_REFERENCE": "tables", "reference_method": "tables", "method_order": "tables",
    "summary_table": "summary", "search_info": "summary", "Search": "summary",
    "curves_data": "plots", "plot_curves": "plots", "weights_data": "plots", "plot_weights": "plots",
    "sparsity_data": "plots", "plot_sparsity": "plots", "admm_data": "plots", "plot_admm": "plots",
    "layer_sparsity_data": "plots", "plot_layer_sparsity": "plots", "macs_data": "plots", "plot_macs": "plots",
    "plot_importance": "plots",
    "importance_data": "importance", "Importances": "importance", "StudyImportance": "importance",
    "study_importance": "importance",
    "build_report": "report", "Report": "report", "render_html": "report", "render_markdown": "report",
    "render_latex": "report",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'analysis' has no attribute {name!r}")
    return getattr(importlib.import_module(f"analysis.{_EXPORTS[name]}"), name)
