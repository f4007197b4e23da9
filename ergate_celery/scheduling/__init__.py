"""What Celery beat drives: releasing due SCHEDULED jobs, the stuck-job sweep, the beat
entries that fire only when the index has work, periodic jobs (one job per firing), the
sweep's look at parked jobs, the overdue hint.

May import: `model`, `lifecycle`, `worker`, `operations`, `stores`, `settings`, `exceptions`
and modules of this folder; Celery. Never `binding`: the binding hands its collaborators in.
"""
