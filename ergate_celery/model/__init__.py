"""The Ergate authoring model: `Workflow`, steps, paths, markers, injection, the `Job`
record and its statuses, the JSON rules, the graph.

May import: `ergate_celery.exceptions` and modules of this folder; pydantic. Never Celery,
kombu, a backend client or Django: a workflow can be defined, and tested, without them.
"""
