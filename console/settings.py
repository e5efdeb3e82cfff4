"""Hangar settings: one module, every value read from HANGAR_* variables.

The list of variables and their meaning is in docs/configuration.md.
"""

from __future__ import annotations

from datetime import timedelta

from console import config
from console.ldap import ldap_settings
from console.sso import sso_settings

BASE_DIR = config.BASE_DIR
DATA_DIR = config.data_dir()
SECRET_KEY = config.secret_key(DATA_DIR)
DEBUG = config.boolean("DEBUG", False)
BIND_HOST, BIND_PORT = config.bind()
# Daphne processes behind the one port under `make run` (deploy/supervisord.conf).
WEB_PROCESSES = config.integer("WEB_PROCESSES", 2, minimum=1)
ALLOWED_HOSTS = config.listing("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = config.listing("CSRF_TRUSTED_ORIGINS", [])
# Every Redis user connects through REDIS (apps/core/redis_target.py): one server, or
# the master Sentinels name (HANGAR_REDIS_SENTINELS, HANGAR_REDIS_MASTER).
REDIS = config.redis_target()
REDIS_URL = REDIS.url
# Served behind TLS (a reverse proxy or Daphne with a certificate): cookies get the
# Secure flag and plain HTTP is redirected. Off for the loopback quick start.
HTTPS = config.boolean("HTTPS", False)
# Reverse proxies (nginx: deploy/nginx/hangar.conf) whose X-Forwarded-For and
# X-Forwarded-Proto are believed; nobody by default (apps/core/forwarded.py).
TRUSTED_PROXIES = config.networks("TRUSTED_PROXIES")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "channels",
    # Its SessionTicket table maps a CAS ticket to a session for single logout.
    "django_cas_ng",
    "apps.core",
    "apps.audit",
    "apps.accounts",
    "apps.inventory",
    "apps.telemetry",
    "apps.registry",
    "apps.deployments",
    "apps.alerts",
    "apps.gateway",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "apps.core.middleware.RequestIdMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "apps.audit.middleware.AuditMiddleware",
    # After the audit: a request it refuses (idle, gated) is still one audited event.
    "apps.accounts.sessions.SessionPolicyMiddleware",
    "apps.core.middleware.DatabaseAwayMiddleware",
]

ROOT_URLCONF = "console.urls"
ASGI_APPLICATION = "console.asgi.application"
WSGI_APPLICATION = None

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
                "django.template.context_processors.i18n",
                "apps.accounts.context.rights",
                "apps.gateway.context.demo_objects",
            ],
        },
    },
]

DATABASES = {"default": config.database(DATA_DIR)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "hangar",
        "OPTIONS": {"socket_connect_timeout": 2, "socket_timeout": 2, **REDIS.cache_options()},
    }
}

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        # Pub/sub channels are server-wide, not per database: the prefix keeps
        # consoles on other Redis databases of the same server out of our groups.
        "CONFIG": {
            "hosts": [REDIS.channel_layer_host()],
            "prefix": f"asgi.db{REDIS.db}",
        },
    }
}

AUTHENTICATION_BACKENDS = ["django.contrib.auth.backends.ModelBackend"]
LDAP = ldap_settings()
if LDAP:
    globals().update(LDAP)
    AUTHENTICATION_BACKENDS.insert(0, "apps.accounts.ldap.HangarLDAPBackend")
# CAS and OpenID Connect, each on when configured (console/sso.py, docs/identity.md).
SSO = sso_settings()
globals().update(SSO)
AUTHENTICATION_BACKENDS.extend(SSO["SSO_BACKENDS"])

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": config.integer("PASSWORD_MIN_LENGTH", 12, minimum=8)},
    },
    {"NAME": "apps.accounts.passwords.CharacterClassValidator"},
    {"NAME": "apps.accounts.passwords.HistoryValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"
# A working day; LDAP group changes take effect at the next login (docs/identity.md).
SESSION_COOKIE_AGE = config.integer("SESSION_HOURS", 8, minimum=1) * 3600
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_SECURE = HTTPS
CSRF_COOKIE_SECURE = HTTPS
SECURE_SSL_REDIRECT = HTTPS
SECURE_HSTS_SECONDS = 31536000 if HTTPS else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = HTTPS
SECURE_HSTS_PRELOAD = False
# HSTS preload binds the whole parent domain for years; a campus appliance must not
# decide that for its university, so the preload check is silenced on purpose.
SILENCED_SYSTEM_CHECKS = ["security.W021"]
# The ASGI wrapper (console/asgi.py) removes X-Forwarded-Proto from any peer that is
# not a trusted proxy, so this header is only ever the trusted proxy's word.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if HTTPS else None
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"

LANGUAGE_CODE = "en"
LANGUAGES = [("en", "English"), ("zh-hans", "简体中文")]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = config.raw("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = DATA_DIR / "staticfiles"
STATIC_ROOT.mkdir(exist_ok=True)  # whitenoise warns on a missing root
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True
WHITENOISE_MAX_AGE = 3600

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "apps.accounts.authentication.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["apps.accounts.permissions.PolicyPermission"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 100,
    "EXCEPTION_HANDLER": "apps.core.errors.api_exception_handler",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Hangar API",
    "DESCRIPTION": "Control plane for on-prem AI inference appliances.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "/static/vendor/swagger-ui",
    "SWAGGER_UI_FAVICON_HREF": "/static/vendor/swagger-ui/favicon-32x32.png",
    "SWAGGER_UI_SETTINGS": {"validatorUrl": None},
}

CELERY_BROKER_URL = REDIS.celery_url()
CELERY_RESULT_BACKEND = REDIS.celery_url()
CELERY_BROKER_TRANSPORT_OPTIONS = REDIS.celery_transport_options()
CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS = REDIS.celery_transport_options()
# Beat sends only while it holds the leader lock in Redis, so one beat per console
# host may run and exactly one sends (console/beat.py).
CELERY_BEAT_SCHEDULER = "console.beat:LeaderScheduler"
BEAT_LOCK_SECONDS = config.integer("BEAT_LOCK_SECONDS", 15, minimum=3)
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "console"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Nothing from a queue or a result is unpickled, on any app (agents are not trusted).
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_BEAT_SCHEDULE = {
    "mark-offline-nodes": {"task": "inventory.mark_offline_nodes", "schedule": 5.0},
    "sync-broker-identities": {"task": "inventory.sync_broker_identities", "schedule": 5.0},
    "reconcile-deployments": {"task": "deployments.reconcile", "schedule": 5.0},
    "judge-availability": {"task": "deployments.judge_availability", "schedule": 30.0},
    "prune-telemetry": {"task": "telemetry.prune_history", "schedule": timedelta(hours=1)},
    "archive-audit": {"task": "audit.archive_old_events", "schedule": timedelta(hours=6)},
    "forward-audit": {"task": "audit.forward_events", "schedule": 5.0},
    "sweep-alerts": {"task": "alerts.sweep", "schedule": 5.0},
    "drain-outbox": {"task": "core.drain_outbox", "schedule": 10.0},
    "resume-checksums": {"task": "registry.resume_checksums", "schedule": 30.0},
    "publish-gateway-snapshot": {"task": "gateway.publish_snapshot", "schedule": 5.0},
    "judge-gateway-traffic": {"task": "gateway.judge_traffic", "schedule": 5.0},
    "flush-gateway-usage": {"task": "gateway.flush_usage", "schedule": 10.0},
    "account-gateway-energy": {"task": "gateway.account_energy", "schedule": 60.0},
}

# Domain settings (docs/configuration.md).
NODE_GRACE_SECONDS = config.integer("NODE_GRACE_SECONDS", 15, minimum=2)
TELEMETRY_DAYS = config.integer("TELEMETRY_DAYS", 30, minimum=1)
# Writes kept in Redis while the database is away (apps/core/outbox.py, docs/reliability.md).
OUTBOX_LIMIT = config.integer("OUTBOX_LIMIT", 50_000, minimum=100)
AUDIT_HOT_DAYS = config.integer("AUDIT_HOT_DAYS", 180, minimum=1)
AUDIT_ARCHIVE_DIR = DATA_DIR / "audit-archive"
# Where agents reach the console's Redis (host, port, database); who they are there
# is each node's own ACL user (apps/inventory/broker.py), never the console's.
AGENT_BROKER_URL = config.raw("AGENT_BROKER_URL", REDIS_URL)
# Keeps node users and channels of consoles sharing one Redis server apart.
AGENT_BROKER_NAMESPACE = config.raw("AGENT_BROKER_NAMESPACE", f"db{REDIS.db}")
LOGIN_FAILURE_LIMIT = config.integer("LOGIN_FAILURE_LIMIT", 5, minimum=1)
LOGIN_LOCK_MINUTES = config.integer("LOGIN_LOCK_MINUTES", 15, minimum=1)
API_TOKEN_MAX_DAYS = config.integer("API_TOKEN_MAX_DAYS", 365, minimum=1)
# Identity hardening (docs/identity.md): 三员分立, second factor, password and
# session policy, audit forwarding.
SEPARATION_OF_DUTIES = config.boolean("SEPARATION_OF_DUTIES", False)
# Who must use a second factor: "admins" (every role that manages something global),
# "all", "none", or a comma-separated list of role names.
REQUIRE_2FA = config.raw("REQUIRE_2FA", "admins")
# SSO logins whose identity server asserts one of these `amr` values count as 2FA.
SSO_MFA_AMR = config.listing("SSO_MFA_AMR", ["mfa", "otp", "hwk", "swk"])
SSO_MFA_TRUSTED = config.boolean("SSO_MFA_TRUSTED", False)
TOTP_ISSUER = config.raw("TOTP_ISSUER", "Hangar")
PASSWORD_MIN_LENGTH = config.integer("PASSWORD_MIN_LENGTH", 12, minimum=8)
PASSWORD_MIN_CLASSES = config.integer("PASSWORD_MIN_CLASSES", 2, minimum=1)
PASSWORD_MAX_AGE_DAYS = config.integer("PASSWORD_MAX_AGE_DAYS", 90, minimum=0)
PASSWORD_HISTORY = config.integer("PASSWORD_HISTORY", 5, minimum=0)
IDLE_LOGOUT_MINUTES = config.integer("IDLE_LOGOUT_MINUTES", 15, minimum=1)
MAX_SESSIONS_PER_USER = config.integer("MAX_SESSIONS_PER_USER", 3, minimum=0)
# Where each audit event is sent as it is written: "syslog" (RFC 5424 over TCP),
# "file" (JSON Lines) or "" for nowhere.
AUDIT_FORWARD = config.raw("AUDIT_FORWARD", "")
AUDIT_SYSLOG_ADDRESS = config.raw("AUDIT_SYSLOG_ADDRESS", "127.0.0.1:6514")
AUDIT_SYSLOG_TLS = config.boolean("AUDIT_SYSLOG_TLS", False)
AUDIT_SYSLOG_CA = config.raw("AUDIT_SYSLOG_CA", "")
AUDIT_FORWARD_FILE = config.raw("AUDIT_FORWARD_FILE", str(DATA_DIR / "audit-forward.jsonl"))
# Links in alert notifications point here (docs/alerts.md): the address people use.
HANGAR_PUBLIC_URL = config.raw(
    "PUBLIC_URL", f"http://{f'[{BIND_HOST}]' if ':' in BIND_HOST else BIND_HOST}:{BIND_PORT}"
)
# /metrics names its GPU families Hangar's way, dcgm-exporter's, or both (docs/metrics.md).
METRICS_GPU_NAMES = config.choice("METRICS_GPU_NAMES", "hangar", ("hangar", "dcgm", "both"))
# Alert e-mail goes through Django's mail settings.
EMAIL_HOST = config.raw("EMAIL_HOST", "localhost")
EMAIL_PORT = config.integer("EMAIL_PORT", 25, minimum=1)
EMAIL_HOST_USER = config.raw("EMAIL_USER", "")
EMAIL_HOST_PASSWORD = config.raw("EMAIL_PASSWORD", "")
EMAIL_USE_TLS = config.boolean("EMAIL_TLS", False)
DEFAULT_FROM_EMAIL = config.raw("EMAIL_FROM", "hangar@localhost")
# The model gateway (docs/gateway.md).
GATEWAY_BIND_HOST, GATEWAY_BIND_PORT = config.bind("GATEWAY_BIND", "127.0.0.1:8400")
GATEWAY_KEY_MAX_DAYS = config.integer("GATEWAY_KEY_MAX_DAYS", 365, minimum=1)
# A worker told to stop leaves the gateway's routes at once, and its process this
# many seconds later, so requests in flight finish.
WORKER_DRAIN_SECONDS = config.integer("WORKER_DRAIN_SECONDS", 10, minimum=0)
# Directories (local or shared storage: NFS, CephFS, Lustre) model files may live under.
MODEL_ROOTS = config.listing("MODEL_ROOTS", ["/srv/models"])
# The first start of `make run` offers a demo (apps/gateway/demo.py, README "First five
# minutes"): a model version shipped in the checkout, so its directory is a model root.
DEMO = config.boolean("DEMO", True)
DEMO_MODEL_ROOT = str(BASE_DIR / "deploy" / "demo-models")
if DEMO and DEMO_MODEL_ROOT not in MODEL_ROOTS:
    MODEL_ROOTS = [*MODEL_ROOTS, DEMO_MODEL_ROOT]

# The CUDA version (as "12.4") node preflight requires of the driver; empty: not checked.
PREFLIGHT_MIN_CUDA = config.raw("PREFLIGHT_MIN_CUDA", "") or ""

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": config.raw("LOG_LEVEL", "INFO")},
    "loggers": {"django_auth_ldap": {"level": "WARNING"}},
}
