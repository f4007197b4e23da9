"""Operations on stored jobs, as `submit_job`, `cancel_job`, `list_jobs`, `retry_job`,
`pause_workflow` and `signal_job` perform them: submission checks, listing, retry, pause and
resume, signals.

May import: `model`, `lifecycle`, `worker` (a `Runtime` is handed in), `stores`, `exceptions`,
`transactions` and modules of this folder. Never `binding`, `scheduling` or `cli`.
"""
