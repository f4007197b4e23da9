"""Settings and the binding refuse what cannot work, and say what to do."""

from __future__ import annotations

import pytest
from celery import Celery

from ergate_celery import ErgateCelery, ErgateError, UnsupportedBackendError, submit_job
from ergate_celery.settings import ErgateSettings, ImproperlyConfiguredError

from ..workflows import echo_workflow


def test_a_bad_index_name_is_refused() -> None:
    with pytest.raises(ImproperlyConfiguredError, match="ergate_index_name"):
        ErgateSettings.from_conf({"ergate_index_name": "two words"})
    assert ErgateSettings.from_conf({}).index_name_of("proj") == "proj"
    assert ErgateSettings.from_conf({"ergate_index_name": ""}).index_name_of("proj") == ""


@pytest.mark.parametrize("value", [0, -3, 2.5, "10", True])
def test_a_bad_timings_kept_is_refused(value: object) -> None:
    with pytest.raises(ImproperlyConfiguredError, match="ergate_timings_kept"):
        ErgateSettings.from_conf({"ergate_timings_kept": value})
    assert ErgateSettings.from_conf({"ergate_timings_kept": 50}).timings_kept == 50


def test_binding_errors_say_what_to_do() -> None:
    app = Celery("unbound", set_as_current=True)
    with pytest.raises(ErgateError, match=r"create ErgateCelery\(app\)"):
        submit_job("anything")
    with pytest.raises(TypeError, match="Celery app"):
        ErgateCelery("app")  # type: ignore[arg-type]
    ErgateCelery(app)
    with pytest.raises(ErgateError, match="already has"):
        ErgateCelery(app)


def test_unsupported_result_backend_is_named() -> None:
    app = Celery("rpc", broker="memory://", backend="rpc://", set_as_current=True)
    ergate = ErgateCelery(app)
    ergate.register_workflow(echo_workflow("w"))
    with pytest.raises(UnsupportedBackendError, match="redis://"):
        ergate.submit_job("w", initial_input_value=1)
