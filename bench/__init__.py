"""Benchmarks of ergate_celery against bare Celery on the same broker and backend.

`python -m bench.run` starts its own workers and prints one table; see `bench/run.py`.
"""
