"""What the report shows (rules/report.smk): readable tables, plots and overlays drawn from the
workflow's declared artifacts (the results table, the pseudo-label quality tables, the trained
models, the benchmark files). One small module per figure or table; matplotlib only, Agg
backend, deterministic SVG (style.py)."""
