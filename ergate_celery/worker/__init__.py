"""What runs inside a Celery worker: the step task class and its installation, the step body,
`Runtime` (the one path by which a job's status is written), the leases of running steps
and the one thread per process that renews them (`renewer.py`), the announcer, rejected
messages, messages for a step task the worker does not have, the retry policy, outage
handling, the paused-workflows cache, fan-out (making a step's children, counting their ends
on the parent, reading their results for the join), concurrency slots at work (taken before a
first step, freed when a job ends), and the observer hook a tracing integration plugs into
(`observing.py`).

May import: `model`, `lifecycle`, `stores`, `settings`, `signals`, `exceptions`, `transactions`
and modules of this folder; Celery and kombu. Never `binding`, `scheduling`, `operations` or
`cli`: what it needs is handed in (a `Runtime`).
"""
