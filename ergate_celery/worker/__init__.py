"""What runs inside a Celery worker: the step task class and its installation, the step body,
`Runtime` (the one path by which a job's status is written), the heartbeat that renews a
running step's lease, the announcer, rejected messages, the retry policy, outage handling and
the paused-workflows cache.

May import: `model`, `lifecycle`, `stores`, `settings`, `signals`, `exceptions`, `transactions`
and modules of this folder; Celery and kombu. Never `binding`, `scheduling`, `operations` or
`cli`: what it needs is handed in (a `Runtime`).
"""
