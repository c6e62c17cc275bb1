"""From a sweep's Parquet results to tables, figures and a report. Imports neither torch nor Ray."""
