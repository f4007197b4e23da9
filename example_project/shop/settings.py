"""Settings of the example shop.

The defaults are embedded: SQLite and a broker on files, both under ``var/``, so the project
runs on a bare machine. Environment variables switch it to real services:

- ``CELERY_BROKER_URL=redis://localhost:6379/0`` or ``amqp://guest:guest@localhost:5672//``
- ``DATABASE_URL=postgres://user:password@localhost:5432/shop``
- ``SHOP_VAR_DIR`` moves ``var/`` (database, broker folder, sent mail, beat schedule).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import django
from django.core.exceptions import ImproperlyConfigured
from ergate_celery.embedded.broker import embedded_broker_settings

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("SHOP_VAR_DIR", BASE_DIR / "var")).resolve()
VAR_DIR.mkdir(parents=True, exist_ok=True)

# A development key: set DJANGO_SECRET_KEY (and DJANGO_DEBUG=0) anywhere that matters.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "django-insecure-ergate-example-shop")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") not in ("", "0", "false", "False")
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]", "testserver"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_celery_results",  # the job records live in its TaskResult table
    "ergate_celery.contrib.django",  # finds workflows.py modules; scheduled jobs; job admin
    "orders",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "shop.urls"
WSGI_APPLICATION = "shop.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]


def database_from_url(url: str) -> dict[str, Any]:
    """Django's DATABASES entry for a ``postgres://`` or ``sqlite:///`` URL."""
    parts = urlsplit(url)
    if parts.scheme in ("postgres", "postgresql"):
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": unquote(parts.path.lstrip("/")),
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": unquote(parts.hostname or ""),
            "PORT": str(parts.port or ""),
            "OPTIONS": dict(parse_qsl(parts.query)),  # e.g. ?sslmode=require
        }
    if parts.scheme == "sqlite":
        return sqlite_database(Path(unquote(parts.path)))
    raise ImproperlyConfigured(
        f"DATABASE_URL must start with postgres://, postgresql:// or sqlite:///, got {url!r}"
    )


def sqlite_database(path: Path) -> dict[str, Any]:
    """SQLite set up for several processes (web, workers) writing at once."""
    options: dict[str, Any] = {"timeout": 30}  # wait for another process's write, not fail
    if django.VERSION >= (5, 1):  # the first Django with these two SQLite options
        options["transaction_mode"] = "IMMEDIATE"  # take the write lock when a transaction starts
        options["init_command"] = "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL"
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": path,
        "OPTIONS": options,
        # Tests get a file of their own too, so that worker threads share it.
        "TEST": {"NAME": path.with_name(f"test-{path.name}")},
    }


DATABASES = {
    "default": (
        database_from_url(os.environ["DATABASE_URL"])
        if os.environ.get("DATABASE_URL")
        else sqlite_database(VAR_DIR / "db.sqlite3")
    )
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# `manage.py test` makes a user in nearly every test: Django's default hasher spends about
# 0.4 s of CPU on each, this one none (the tests check logins, not the strength of a hash).
if sys.argv[1:2] == ["test"]:
    PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "orders:job_list"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"  # the order form's start time is read in this zone
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"

# The order confirmation the workflow's last step sends lands in var/mail/.
EMAIL_BACKEND = "django.core.mail.backends.filebased.EmailBackend"
EMAIL_FILE_PATH = VAR_DIR / "mail"
DEFAULT_FROM_EMAIL = "shop@example.com"

# Celery: every CELERY_* setting here is Celery's lowercase setting (shop/celery.py reads
# them with namespace="CELERY"), ergate_celery's CELERY_ERGATE_* ones included.
CELERY_RESULT_BACKEND = "django-db"  # jobs are TaskResult rows: the admin lists them
CELERY_RESULT_EXTENDED = True
CELERY_TIMEZONE = TIME_ZONE
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")

if os.environ.get("CELERY_BROKER_URL"):
    CELERY_BROKER_URL = os.environ["CELERY_BROKER_URL"]  # redis://... or amqp://...
else:
    # No server: a broker on files that every process pointed at var/broker shares.
    _broker = embedded_broker_settings(VAR_DIR / "broker")
    CELERY_BROKER_URL = _broker["broker_url"]
    CELERY_BROKER_TRANSPORT = _broker["broker_transport"]
    CELERY_BROKER_TRANSPORT_OPTIONS = _broker["broker_transport_options"]

# Beat releases due scheduled jobs this often (default 1 s; small for the demo).
CELERY_ERGATE_SCHEDULE_INTERVAL = 0.5
# A step's progress reports are stored at most this often (default 1 s).
CELERY_ERGATE_PROGRESS_INTERVAL = 0.2
# Keep order data and e-mail addresses out of task args in logs and Flower (the default).
CELERY_ERGATE_SHOW_TASK_ARGS = False
# A job with no progress for this long is stuck: its step is published again.
CELERY_ERGATE_STUCK_AFTER = 600.0
CELERY_ERGATE_STUCK_ACTION = "requeue"

# How long the simulated warehouse takes to pick an order, in seconds (see orders/services.py).
ORDERS_PICK_SECONDS = float(os.environ.get("ORDERS_PICK_SECONDS", "2.0"))
# Orders over this total (in cents) wait for staff approval after their stock is reserved,
# for at most ORDERS_APPROVAL_TIMEOUT seconds (then the job fails with SignalTimeout).
ORDERS_APPROVAL_OVER_CENTS = int(os.environ.get("ORDERS_APPROVAL_OVER_CENTS", "50000"))
ORDERS_APPROVAL_TIMEOUT = float(os.environ.get("ORDERS_APPROVAL_TIMEOUT", "86400"))
# With a number of seconds, a shipped order's job sleeps that long after notifying the
# customer, then sends a reminder; 0 ends the job at notify.
ORDERS_REMIND_SECONDS = float(os.environ.get("ORDERS_REMIND_SECONDS", "0"))
