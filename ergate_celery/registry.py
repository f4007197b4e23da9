"""The workflows of one Celery app: registered by hand or found in `<package>.workflows`
modules, the way Celery finds `tasks.py`."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

from celery import Celery
from celery.signals import import_modules

from ergate_celery.exceptions import InvalidDefinitionError, UnknownWorkflowError
from ergate_celery.model.workflow import Workflow
from ergate_celery.model.workflow_step import WorkflowStep

#: One discovery receiver per app and signal, however often autodiscover is called.
_DISCOVER_UID = "ergate_celery.autodiscover_workflows"
#: Where `autodiscover` looks: package names, or a function giving them when it looks.
Packages = Iterable[str] | Callable[[], Iterable[str]]
#: The Django app that finds the workflows of the other installed apps.
DJANGO_APP = "ergate_celery.contrib.django"


class WorkflowRegistry:
    """Workflows by unique name; registering one installs its steps as Celery tasks."""

    def __init__(self, app: Celery, install_step: Callable[[WorkflowStep[Any, Any]], None]) -> None:
        self.app = app
        self._install_step = install_step
        self._workflows: dict[str, Workflow] = {}
        self._pending_discovery: list[Callable[[], None]] = []
        self._lock = threading.RLock()

    def register(self, workflow: Workflow) -> None:
        """Check `workflow` and install one Celery task per step."""
        if not isinstance(workflow, Workflow):
            raise TypeError(
                f"register_workflow takes a Workflow, got {type(workflow).__name__}; "
                "create one with Workflow(unique_name=...)"
            )
        with self._lock:
            existing = self._workflows.get(workflow.unique_name)
            if existing is workflow:
                return
            if existing is not None:
                raise InvalidDefinitionError(
                    f"Another workflow named {workflow.unique_name!r} is already registered"
                )
            workflow.validate()
            for step in workflow:
                self._install_step(step)
            self._workflows[workflow.unique_name] = workflow

    def autodiscover(
        self, packages: Packages, related_name: str = "workflows", force: bool = False
    ) -> None:
        """See `ErgateCelery.autodiscover_workflows`: import now when the moment has come,
        else when a worker or beat starts, the app is finalized, or a workflow is looked up."""

        def discover() -> None:
            names = packages() if callable(packages) else packages
            for package in names:
                self._register_module(f"{package}.{related_name}")

        # Called while Celery imports the worker's modules (Django's ready() is), or later:
        # the moment to import has come, so import now and let an error stop the start.
        started = getattr(self.app.loader, "worker_initialized", False)
        if force or started or getattr(self.app, "finalized", False):
            discover()
            return
        with self._lock:
            self._pending_discovery.append(discover)
        # Celery's loader raises what an `import_modules` receiver raised, so a worker or beat
        # stops at start; the finalize signal only logs, and a failed discovery stays pending.
        import_modules.connect(
            self._discover_on_signal, sender=self.app, weak=False, dispatch_uid=_DISCOVER_UID
        )
        self.app.on_after_finalize.connect(
            self._discover_on_signal, weak=False, dispatch_uid=_DISCOVER_UID
        )

    def _discover_on_signal(self, **kwargs: Any) -> None:
        self._discover_pending()

    def _discover_pending(self) -> None:
        with self._lock:
            pending, self._pending_discovery = self._pending_discovery, []
            for done, discover in enumerate(pending):
                try:
                    discover()
                except BaseException:
                    # Keep it (and the rest) pending: the next lookup raises the error again
                    # instead of reporting that no workflow is registered.
                    self._pending_discovery[:0] = pending[done:]
                    raise

    def _register_module(self, module_name: str) -> None:
        try:
            module = self.app.loader.import_from_cwd(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                return  # the package has no workflows module, as Celery skips a missing tasks.py
            raise
        for value in vars(module).values():
            if isinstance(value, Workflow):
                self.register(value)

    def get(self, name: Any) -> Workflow:
        """The registered workflow called `name`, or `UnknownWorkflowError`."""
        if self._pending_discovery:
            self._discover_pending()
        if not isinstance(name, str):
            raise TypeError(f"A workflow name is a string, got {type(name).__name__}")
        try:
            return self._workflows[name]
        except KeyError:
            known = ", ".join(sorted(self._workflows)) or "none"
            raise UnknownWorkflowError(
                f"No workflow named {name!r} is registered (registered: {known}); register it "
                f"with ErgateCelery.register_workflow() or autodiscover_workflows(){django_hint()}"
            ) from None

    def autodiscover_django(self, *, if_ready: bool = False) -> None:
        """Register the workflows of every installed Django app's `workflows` module.

        The Django app calls it when Django's apps are ready; with `if_ready`, it does
        nothing unless they are ready already and the Django app is installed (a Celery app
        created after Django started, whose ready() has run).
        """
        if if_ready:
            if "django.apps" not in sys.modules:
                return
            from django.apps import apps

            if not (apps.ready and apps.is_installed(DJANGO_APP)):
                return
        self.autodiscover(django_app_packages)

    def all(self) -> dict[str, Workflow]:
        """The registered workflows by unique name."""
        if self._pending_discovery:
            self._discover_pending()
        return dict(self._workflows)


def django_hint() -> str:
    """Why the workflows.py of Django apps were not found: the Django app is not installed."""
    if "django.conf" not in sys.modules:
        return ""
    from django.conf import settings

    try:
        if not settings.configured and not os.environ.get("DJANGO_SETTINGS_MODULE"):
            return ""
        installed = list(settings.INSTALLED_APPS)
    except Exception:  # settings that cannot be read are Django's error to report, not ours
        return ""
    if any(entry == DJANGO_APP or entry.startswith(f"{DJANGO_APP}.") for entry in installed):
        return ""
    return (
        f"; Django is configured but {DJANGO_APP!r} is not in INSTALLED_APPS, so the workflows.py "
        "modules of installed apps are not registered: add it to INSTALLED_APPS"
    )


def django_app_packages() -> list[str]:
    """The packages of Django's installed apps, where `autodiscover_django` looks."""
    from django.apps import apps

    return [config.name for config in apps.get_app_configs()]
