"""The report: benchmark results -> tables, plots, TrainingArguments exports, costs and one HTML page.

Modules, one concern each: `plugin` (pytest hooks: collect rows, write at session end), `build`
(`write_report`, used by the plugin and by `python -m reports`), `rows` (results grouped per model
and hardware), `tables`, `checks` (step-time validation and loss parity), `costs`, `plots`, `html`,
`export` (best/<case id>/), `paper` (the paper's figures), `history` (real step times into
pytest-benchmark's storage).

Importing the package loads nothing heavy; pandas and matplotlib load with `reports.build`.
"""
