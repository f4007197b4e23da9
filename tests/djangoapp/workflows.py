"""A workflows module that ergate_celery.contrib.django must find by itself."""

from ergate_celery import Workflow

discovered = Workflow(unique_name="discovered")


@discovered.step
def greet(name: str) -> str:
    return f"hello {name}"
