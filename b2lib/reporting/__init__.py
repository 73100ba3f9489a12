"""Reporting: reading finished runs back, figures in one style, the front page.

- ``report``: run folders into tables (evaluations, stage metrics, per-image scores, costs) and sample grids;
- ``plots`` and ``plots_bars``: the figures; ``plot_style``: one colour per method, legends outside the data;
- ``claims``: the paper's claims and this project's extensions as data, and the rule that gives each its verdict;
- ``frontpage``: README's generated blocks; ``summary_table``: the full table of comparisons;
- ``schematic``: the front page's picture of B²-DiffuRL, drawn from the library's own schedule.
"""
