"""Settings: one module, everything from environment variables, embedded defaults that
run on a laptop with no services (SQLite, local-memory cache, in-memory channel layer,
the card simulator). `.env.example` lists every variable; a `.env` file next to manage.py
is read when present (the process's own environment wins)."""

from __future__ import annotations

import datetime
import os
import secrets
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from dotenv import load_dotenv

BASE_DIR = Path(__file__).resolve().parent.parent

# `.env` (or the file SIGNPLATFORM_ENV_FILE names; set it empty to read none) fills in the
# variables the environment does not set: systemd's EnvironmentFile and compose's env_file
# set them first, and a variable set in the shell always wins.
_ENV_FILE = os.environ.get("SIGNPLATFORM_ENV_FILE", str(BASE_DIR / ".env"))
if _ENV_FILE and Path(_ENV_FILE).is_file():
    load_dotenv(_ENV_FILE, override=False)


def env(name: str, default: str = "") -> str:
    """The variable's value; the default when it is unset or empty (as in a copy of .env.example)."""
    return os.environ.get(name) or default


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    word = value.strip().lower()
    if word not in _TRUE + _FALSE:
        # A typo must not turn a switch off quietly (SECURE_COOKIES=ture would mean insecure cookies).
        raise ImproperlyConfigured(f"{name} must be 1 or 0 (true/false, yes/no, on/off), not {value!r} "
                                   "(see .env.example)")
    return word in _TRUE


def _env_number(name: str, default, kind, what: str):
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        return kind(value.strip())
    except ValueError:
        # Said in one line that names the variable (the environment or the .env file), not
        # as Python's "invalid literal for int()".
        raise ImproperlyConfigured(f"{name} must be {what}, not {value!r} (see .env.example)") from None


def env_float(name: str, default: float) -> float:
    return _env_number(name, default, float, "a number")


def env_int(name: str, default: int) -> int:
    return _env_number(name, default, int, "a whole number")


VAR_DIR = Path(env("SIGNPLATFORM_VAR_DIR", str(BASE_DIR / "var")))


def _private(path: Path, *, directory: bool) -> None:
    """Create `path` for this user only (0700 / 0600), and tighten it if it exists and is ours:
    var/ holds the SQLite database, keys and secrets."""
    mode = 0o700 if directory else 0o600
    if directory:
        path.mkdir(mode=mode, parents=True, exist_ok=True)
    elif not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, mode))
    try:
        # (Windows has no owner ids, nor these modes: there the folder's ACL decides.)
        if hasattr(os, "getuid") and path.stat().st_uid == os.getuid() and path.stat().st_mode & 0o777 != mode:
            path.chmod(mode)
    except OSError:
        pass


_private(VAR_DIR, directory=True)


def _secret_file(name: str, nbytes: int) -> str:
    """A random secret kept in var/ with mode 0600, created on first use."""
    path = VAR_DIR / name
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(nbytes))
    return path.read_text().strip()


DJANGO_SECRET_KEY_FILE = VAR_DIR / "django-secret-key"
SECRET_KEY = env("DJANGO_SECRET_KEY") or _secret_file(DJANGO_SECRET_KEY_FILE.name, 48)
DEBUG = env_bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = [h.strip() for h in env("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]").split(",") if h.strip()]
CSRF_TRUSTED_ORIGINS = [o.strip() for o in env("DJANGO_CSRF_TRUSTED_ORIGINS").split(",") if o.strip()]

# --- Browser security of the admin (behind HTTPS, set the first three) ----------------------
# Cookies sent only over HTTPS; HSTS; redirect plain HTTP. Off by default: `make run` is
# plain HTTP on 127.0.0.1, where Secure cookies would never come back.
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env_bool("SECURE_COOKIES", False)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
# Health checks and scrapers on the private side (a container's health check, Prometheus
# next to the process) speak plain HTTP to the process itself: never redirected.
SECURE_REDIRECT_EXEMPT = [r"^api/v1/health$", r"^health$", r"^metrics$"]
# Behind a TLS-terminating proxy that sets X-Forwarded-Proto (and strips it from clients).
if env_bool("SECURE_PROXY_SSL_HEADER", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = CSRF_COOKIE_SAMESITE = "Lax"
# Sent on every HTML page (signplatform.middleware.SecurityHeadersMiddleware): nothing from
# another site, no inline scripts; inline styles are allowed (the admin and the SVG charts).
CONTENT_SECURITY_POLICY = env("CONTENT_SECURITY_POLICY") or (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "font-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'; "
    "object-src 'none'"
)

# --- Admin login throttling (django-axes) ------------------------------------------------------
# After AXES_FAILURE_LIMIT wrong passwords for one user from one address, that pair is locked
# out for AXES_COOLOFF_MINUTES (a right password does not get in meanwhile); a success resets.
AXES_FAILURE_LIMIT = env_int("AXES_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = datetime.timedelta(minutes=env_float("AXES_COOLOFF_MINUTES", 15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "core.networks.client_address"  # TRUSTED_PROXIES decide X-Forwarded-For
AXES_LOCKOUT_TEMPLATE = "admin/login_locked.html"
AXES_VERBOSE = False
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]

# Master key for secrets at rest (App Secrets, card PINs). Without the variable, a key
# file is created in var/ (mode 0600) on first run and its path is printed by `make run`.
SIGNPLATFORM_MASTER_KEY = env("SIGNPLATFORM_MASTER_KEY")
SIGNPLATFORM_MASTER_KEY_FILE = VAR_DIR / "master.key"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "axes",
    "audit",
    "signing",
    "accessids",
    "webhooks",
    "xmlstore",
    "declarations",
    "api",
    "console",
    "signplatform",
]

MIDDLEWARE = [
    "signplatform.middleware.RequestIdMiddleware",
    "signplatform.middleware.ApiHostMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",  # the browser's language, before a user has chosen
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "console.language.UserLanguageMiddleware",  # the signed-in user's own choice
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "signplatform.middleware.SecurityHeadersMiddleware",
    "axes.middleware.AxesMiddleware",  # last, as django-axes asks
]

# The paths machines call (signplatform/api_handler.py): no sessions, CSRF, user authentication
# or messages there (every request is authenticated by its signature), and no thread hops.
API_MIDDLEWARE = [
    "signplatform.middleware.RequestIdMiddleware",
    "signplatform.middleware.ApiHostMiddleware",
    "signplatform.middleware.InlineSecurityMiddleware",
    "signplatform.middleware.InlineXFrameOptionsMiddleware",
]

ROOT_URLCONF = "signplatform.urls"
ASGI_APPLICATION = "signplatform.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
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

DATABASES = {
    "default": dj_database_url.parse(
        env("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'db.sqlite3'}",
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    if str(DATABASES["default"]["NAME"]) != ":memory:":
        _private(Path(DATABASES["default"]["NAME"]), directory=False)  # SQLite gives -wal/-shm its mode
    # WAL and a busy timeout let the web process and management commands share the file.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env("REDIS_URL")
if REDIS_URL:
    from redis.asyncio.retry import Retry as AsyncRetry
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    # After a Redis restart every pooled connection is dead; one retry on a fresh connection
    # turns that into nothing the caller sees (instead of one failed request per connection).
    _REDIS_OPTIONS = {
        "IGNORE_EXCEPTIONS": False, "SOCKET_CONNECT_TIMEOUT": 2, "SOCKET_TIMEOUT": 2,
        "CONNECTION_POOL_KWARGS": {"retry": Retry(ExponentialBackoff(cap=0.2, base=0.02), 1)},
    }
    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "signplatform",
            "OPTIONS": _REDIS_OPTIONS,
        },
        # The nonce store and rate limits: must raise on connection errors (fail closed).
        "nonces": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "signplatform",
            "OPTIONS": _REDIS_OPTIONS,
        },
    }
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                # channels_redis blocks 5 s in BZPOPMIN: the socket timeout must be longer.
                # redis-py raises at max_connections instead of waiting, and each
                # concurrent send holds one connection.
                "hosts": [{"address": REDIS_URL, "socket_timeout": 15, "max_connections": 1000,
                           "retry": AsyncRetry(ExponentialBackoff(cap=0.2, base=0.02), 1)}],
                "prefix": "signplatform",
                "capacity": 1000,
                "expiry": 60,
            },
        }
    }
else:
    CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "signplatform"},
        "nonces": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "signplatform-limits"},
    }
    CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels.layers.InMemoryChannelLayer", "CONFIG": {"capacity": 1000, "expiry": 60}}
    }

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# The default language (en or zh-hans); a browser that asks for another one of LANGUAGES gets it,
# and a signed-in administrator's own choice (the switch in the admin header) wins.
LANGUAGE_CODE = env("DJANGO_LANGUAGE_CODE", "en")
LANGUAGES = [("en", "English"), ("zh-hans", "简体中文")]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = env("TIME_ZONE", "Asia/Shanghai")
USE_I18N = True
USE_TZ = True
# One date format in the admin per language (signplatform/formats/<language>/formats.py).
FORMAT_MODULE_PATH = ["signplatform.formats"]

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
# The embedded server serves static files itself; behind a reverse proxy set it to 0
# and run collectstatic.
SERVE_STATIC = env_bool("SERVE_STATIC", True)

REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": [],
    "DEFAULT_PARSER_CLASSES": ["api.parsers.StrictJSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "EXCEPTION_HANDLER": "signplatform.exception_handler.api_exception_handler",
    "UNAUTHENTICATED_USER": None,
}

# --- The signed API (docs/signing-api.md) -------------------------------------------
API_TIMESTAMP_TOLERANCE_SECONDS = env_int("API_TIMESTAMP_TOLERANCE_SECONDS", 300)
# A nonce is remembered for twice the timestamp window.
API_NONCE_TTL_SECONDS = env_int("API_NONCE_TTL_SECONDS", 2 * API_TIMESTAMP_TOLERANCE_SECONDS)
# "redis" (SET NX, needs REDIS_URL) or "database" (a unique-constraint table).
NONCE_STORE = env("NONCE_STORE", "redis" if REDIS_URL else "database")
# Threads that run the API's database work (one with SQLite), each keeping its connection.
API_DB_THREADS = env_int("API_DB_THREADS", 4)
# How long a thread of a serving process may keep the GIL while another waits (Python's
# default: 5 ms). Web and gateway processes run an event loop beside their database threads:
# at 5 ms a finished database job waits up to 5 ms to hand its answer back (core/eventloop.py).
THREAD_SWITCH_INTERVAL_MS = env_float("THREAD_SWITCH_INTERVAL_MS", 1.0)
API_MAX_BODY_BYTES = env_int("API_MAX_BODY_BYTES", 10 * 1024 * 1024)
# POST /api/v1/sign in its plain case without Django's handler chain and DRF (api/fastsign.py):
# the same checks and audit event at about three quarters of the CPU. 0: every request takes the
# lean handler.
API_FAST_PATH = env_bool("API_FAST_PATH", True)
DATA_UPLOAD_MAX_MEMORY_SIZE = API_MAX_BODY_BYTES
# Reverse proxies whose X-Forwarded-For is believed (CIDR list); empty: the peer address is the client.
TRUSTED_PROXIES = [p.strip() for p in env("TRUSTED_PROXIES").split(",") if p.strip()]

# --- Customs payloads (docs/ceb-xml-and-179.md) ---------------------------------------
# Where `POST /api/v1/sign/179` with "upload": true posts the signed 179 data. Default: customs'
# test system; production is https://customs.chinaport.gov.cn/ceb2grab/grab/realTimeDataUpload
CUSTOMS_179_UPLOAD_URL = env(
    "CUSTOMS_179_UPLOAD_URL", "https://swapptest.singlewindow.cn/ceb2grab/grab/realTimeDataUpload"
)
CUSTOMS_179_UPLOAD_TIMEOUT = env_float("CUSTOMS_179_UPLOAD_TIMEOUT", 15.0)
# CEB documents parsed, canonicalised and verified at once per process (bounds memory and
# keeps the event loop's threads free for other requests).
XML_WORK_CONCURRENCY = env_int("XML_WORK_CONCURRENCY", 4)

# --- Customs declarations (docs/declarations.md) -------------------------------------------
# The customs data-exchange server declarations are posted to (`POST {server}/cebcmsg`) and
# whose receipt endpoints are polled; a company registration may name its own. No default:
# no official test or production address is published (see the README).
CUSTOMS_CEB_SERVER = env("CUSTOMS_CEB_SERVER").rstrip("/")
CUSTOMS_CEB_TIMEOUT = env_float("CUSTOMS_CEB_TIMEOUT", 15.0)  # seconds per request to it
# Submissions: first retry delay (doubles with each failed attempt), longest delay, attempts.
DECLARATION_RETRY_BASE_SECONDS = env_float("DECLARATION_RETRY_BASE_SECONDS", 5.0)
DECLARATION_RETRY_MAX_SECONDS = env_float("DECLARATION_RETRY_MAX_SECONDS", 300.0)
DECLARATION_SUBMIT_MAX_ATTEMPTS = env_int("DECLARATION_SUBMIT_MAX_ATTEMPTS", 30)
DECLARATION_SUBMIT_CONCURRENCY = env_int("DECLARATION_SUBMIT_CONCURRENCY", 4)
# Receipts: how often the endpoints are asked, how long after its last change a declaration
# is still followed (an inventory is released days after it was accepted), and how far back
# each query reaches before the previous one (receipts already kept are skipped).
DECLARATION_RECEIPT_POLL_SECONDS = env_float("DECLARATION_RECEIPT_POLL_SECONDS", 30.0)
DECLARATION_RECEIPT_FOLLOW_HOURS = env_float("DECLARATION_RECEIPT_FOLLOW_HOURS", 72.0)
DECLARATION_RECEIPT_OVERLAP_SECONDS = env_float("DECLARATION_RECEIPT_OVERLAP_SECONDS", 120.0)
# The web process sends declarations and polls receipts itself (off: `manage.py declaration_worker`).
DECLARATION_WORKER_EMBEDDED = env_bool("DECLARATION_WORKER_EMBEDDED", True)

# --- Operations: audit chain, metrics, webhooks, dashboard ------------------------------------
# Key of the audit log's hash chain (HMAC-SHA256), outside the database so that someone who
# can only write to the database cannot recompute a valid chain. Default: var/audit-chain.key
# (mode 0600, created on first use). Every process of a deployment needs the same key.
AUDIT_CHAIN_KEY_FILE = VAR_DIR / "audit-chain.key"
AUDIT_CHAIN_KEY = env("AUDIT_CHAIN_KEY") or _secret_file(AUDIT_CHAIN_KEY_FILE.name, 32)
# GET /metrics (Prometheus): allowed from these networks, or with "Authorization: Bearer <token>".
METRICS_TOKEN = env("METRICS_TOKEN")
METRICS_ALLOWED_NETWORKS = [
    n.strip() for n in env("METRICS_ALLOWED_NETWORKS", "127.0.0.1/32,::1/128").split(",") if n.strip()
]
# Webhook deliveries: per-attempt timeout, attempts before giving up, first retry delay (doubles).
WEBHOOK_TIMEOUT = env_float("WEBHOOK_TIMEOUT", 10.0)
WEBHOOK_MAX_ATTEMPTS = env_int("WEBHOOK_MAX_ATTEMPTS", 8)
WEBHOOK_RETRY_BASE_SECONDS = env_float("WEBHOOK_RETRY_BASE_SECONDS", 2.0)
WEBHOOK_RETRY_MAX_SECONDS = env_float("WEBHOOK_RETRY_MAX_SECONDS", 600.0)
WEBHOOK_CONCURRENCY = env_int("WEBHOOK_CONCURRENCY", 16)  # sends in flight per worker
WEBHOOK_CONCURRENCY_PER_WEBHOOK = env_int("WEBHOOK_CONCURRENCY_PER_WEBHOOK", 4)
# The web process delivers webhooks itself (off: run `manage.py webhook_worker`).
WEBHOOK_WORKER_EMBEDDED = env_bool("WEBHOOK_WORKER_EMBEDDED", True)
# How often the dashboard page refreshes its figures and card states.
DASHBOARD_REFRESH_SECONDS = env_int("DASHBOARD_REFRESH_SECONDS", 5)

SPECTACULAR_SETTINGS = {
    "TITLE": "Signing platform API",
    "VERSION": "1.0.0",
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Choice sets used by several declaration fields (request, answer, query): one name each.
    "ENUM_NAME_OVERRIDES": {
        "DeclarationStatusEnum": "declarations.models.Declaration.STATUSES",
        "CebMessageTypeEnum": "declarations.models.MESSAGE_TYPES",
    },
}

# --- The UKey gateway ------------------------------------------------------------------
# The default card device is created from these on start-up. Without UKEY_URL the
# platform runs the card simulator on loopback and talks to it.
UKEY_URL = env("UKEY_URL")
UKEY_PIN = env("UKEY_PIN")
UKEY_DEFAULT_DEVICE = env("UKEY_DEFAULT_DEVICE", "default")
UKEY_CONNECT_TIMEOUT = env_float("UKEY_CONNECT_TIMEOUT", 5.0)
UKEY_REQUEST_TIMEOUT = env_float("UKEY_REQUEST_TIMEOUT", 10.0)
UKEY_QUEUE_SIZE = env_int("UKEY_QUEUE_SIZE", 256)
# Requests outstanding at the control at once (the card still executes one at a time).
# 2 hides the WebSocket round trip between operations; 1 for a control not known to queue.
UKEY_PIPELINE_DEPTH = env_int("UKEY_PIPELINE_DEPTH", 1 if UKEY_URL else 2)
UKEY_CALL_TIMEOUT = env_float("UKEY_CALL_TIMEOUT", 30.0)
UKEY_PROBE_INTERVAL = env_float("UKEY_PROBE_INTERVAL", 30.0)
UKEY_RECONNECT_MIN = env_float("UKEY_RECONNECT_MIN", 0.2)
# Capped low: a card that is back is used within seconds, and a local connect costs nothing.
UKEY_RECONNECT_MAX = env_float("UKEY_RECONNECT_MAX", 5.0)
# Gateway hosts follow the card devices table (admin changes take effect within 2 s). Off:
# the cards found at start are served until a restart (for several platforms sharing one
# database, as the tests run them).
UKEY_FOLLOW_DEVICES = env_bool("UKEY_FOLLOW_DEVICES", True)
# After a drop, requests wait this long (within their own timeout) for the reconnect.
UKEY_RECONNECT_WAIT = env_float("UKEY_RECONNECT_WAIT", 3.0)
UKEY_SHUTDOWN_GRACE = env_float("UKEY_SHUTDOWN_GRACE", 10.0)
UKEY_MAX_FRAME_BYTES = env_int("UKEY_MAX_FRAME_BYTES", 64 * 1024 * 1024)
# "embedded": the gateway runs inside the web process (default without Redis).
# "external": `manage.py ukey_gateway --device SLUG` processes own the cards (needs Redis).
UKEY_GATEWAY_MODE = env("UKEY_GATEWAY_MODE", "external" if REDIS_URL else "embedded")
# The card link (ukey/link.py): a `ukey_gateway` process also takes the card requests of the
# web processes on its host over a Unix socket in var/ (a fraction of the channel layer's cost);
# off: every request crosses the channel layer.
UKEY_LINK = env_bool("UKEY_LINK", True)

UKEY_SIMULATOR_PORT = env_int("UKEY_SIMULATOR_PORT", 61232)
UKEY_SIMULATOR_ALGORITHM = env("UKEY_SIMULATOR_ALGORITHM", "rsa")
UKEY_SIMULATOR_LATENCY_MS = env_float("UKEY_SIMULATOR_LATENCY_MS", 20.0)
UKEY_SIMULATOR_PIN = env("UKEY_SIMULATOR_PIN", "88888888")
UKEY_SIMULATOR_KEY_DIR = Path(env("UKEY_SIMULATOR_KEY_DIR", str(VAR_DIR / "ukey-simulator")))

# --- Logging ------------------------------------------------------------------------------
LOG_LEVEL = env("LOG_LEVEL", "INFO")
LOG_FORMAT = env("LOG_FORMAT", "text")  # text | json
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "request_id": {"()": "core.logging.RequestIdFilter"},
        "redact": {"()": "core.logging.RedactingFilter"},
    },
    "formatters": {
        "text": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"},
        "json": {"()": "core.logging.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "json" if LOG_FORMAT == "json" else "text",
            "filters": ["request_id", "redact"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.server": {"level": "WARNING"},
        # At DEBUG, websockets logs every frame (card PINs are masked by the redact filter).
        "websockets": {"level": "DEBUG" if LOG_LEVEL == "DEBUG" else "WARNING"},
        "asyncio": {"level": "WARNING"},
        # One INFO line per webhook POST would double the log with an audit feed.
        "httpx": {"level": "WARNING"},
    },
}
