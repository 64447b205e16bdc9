"""`harness report`: a study's tables, statistics and figures, rebuilt from its run directories alone.

- report: the tidy table, the cells (one value per pre-training seed), the comparisons, the signal test, the claims'
  verdicts and the flags (`build_report`);
- report_md: writing report.md, table.md / table.tex, tidy.csv and the figures (`write_report`);
- evidence: per-example outputs of the runs as seed scores; multibootstrap: the intervals; claims (with
  paper_claims.yaml): the paper's claims and their tests; stats: descriptive statistics of a cell;
- plots, figure_layout: the figures.
Reads what harness.study's sweeps write; nothing in harness.study imports this package.
"""
