"""Load benchmarks for servewell: wrk on loopback against the service and two baselines.

Run ``make bench`` (``.venv/bin/python bench/run.py``); see ``bench/run.py --help``.
"""
