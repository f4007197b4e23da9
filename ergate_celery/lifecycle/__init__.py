"""The pure rules of a job's life: the transitions (stored job + event -> job to write), the
lifecycle table, running one step and advancing the job after it, waiting, fan-out and fan-in,
flow control (the slots of a concurrency key, `slots`; waiting for a slot, `flow`), and a job
queued by an operation until its step is published (`publishing`).

May import: `ergate_celery.model`, `ergate_celery.exceptions` and modules of this folder.
Never Celery, kombu, a backend client or Django.
"""
