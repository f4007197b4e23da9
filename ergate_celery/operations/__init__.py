"""Operations on stored jobs, one module each: `submission` (`submit_job`'s checks, then
storing and publishing), `reading` (`get_job`, `wait_for_job`), `cancelling`, `listing`
(and the one reading of moments a person types, `1h` or `2026-11-30`, for the CLI and the
console), `retrying`, `pausing` (pause and resume), `signalling`, `children`
(`list_jobs(parent=)`) and `flow` (why a parked job waits); `queueing` holds what retry and
signal share (write, then publish: repeatable, and on commit inside a Django transaction).
The binding's methods delegate here.

May import: `model`, `lifecycle`, `worker` (a `Runtime` is handed in), `stores`, `exceptions`,
`transactions` and modules of this folder. Never `binding`, `scheduling` or `cli`.
"""
