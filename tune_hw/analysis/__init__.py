"""Pure analysis of a run's tables: selection (validation vs test), gaps and effects,
importance, study-specific tables, per-config statistics and the verdicts of a study's claims.

Every function takes DataFrames in the schema of `tune_hw/results.py` (plus the resolved
study dict) and returns numbers, dicts or DataFrames. Nothing here plots, prints or touches
files, so each piece is unit-tested on small hand-made tables (tests/test_analysis.py,
tests/test_findings.py, tests/test_config_stats.py). Read it in this order: `trials`,
`params`, `selection`, `effects`, `importance`, `specific`; then `trial_metrics`,
`config_stats`, `findings`.

Conventions used throughout:
- a trial is *scored* when it has a finite `best_val_acc` and `test_acc_at_best`, whatever
  its status (early-stopped, diverged-after-peaking and still-running trials were candidates
  the search could have picked too). A trial with no healthy epoch (diverged in its first,
  failed, pending) has none: it is left out of every statistic and counted apart
  (`left_out`);
- the *validation winner* and every "best" is the first scored trial by the study's ranking,
  `ranking.Ranking` (its search.metric and mode, one tie-break), the same ranking the search
  prints and `weights: run:` transfers from;
- the *trial index* is the row order of trials.parquet.
"""
