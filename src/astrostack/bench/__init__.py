"""Benchmarks like the paper's Table 1: a matrix of (hosts, nodes) points,
each deployed, run and destroyed ``repeats`` times; results in SQLite; a
report with Table 1's columns and the paper's Fig. 5 and Fig. 6.

matrix.py  the MATRIX.yaml model          runner.py  deploy / job / destroy, timings, lock
db.py      SQLite tables runs and points  report.py  Table 1 (table, CSV, JSON)
plots.py   Fig. 5 and Fig. 6 as PNG       schedule.py  cron.d entry or systemd timer
"""
