"""deploy/helm/hangar checked by Helm's own lint (tests/support/helm.py).

Lint renders every template with the chart's values.yaml and parses the result,
so each test lints a copy of the chart with the values it is about.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from tests.support import helm

CHART = helm.ROOT / "deploy" / "helm" / "hangar"

# What an install gives (docs/kubernetes.md): the external services and the key.
INSTALL = {
    "externalDatabase": {"url": "postgres://hangar:pw@postgres.db.svc:5432/hangar"},
    "externalRedis": {"url": "redis://hangar:pw@redis.db.svc:6379/0"},
    "secretKey": {"value": "k" * 48},
}


def _merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = _merge(base[key], value) if isinstance(value, dict) and key in base else value
    return merged


def chart_with(tmp_path: Path, values: dict) -> Path:
    copy = tmp_path / "hangar"
    shutil.copytree(CHART, copy)
    shipped = yaml.safe_load((CHART / "values.yaml").read_text())
    (copy / "values.yaml").write_text(yaml.safe_dump(_merge(shipped, values)))
    return copy


def problems(chart: Path) -> list[helm.LintMessage]:
    return [m for m in helm.lint(chart) if m.severity >= helm.WARNING]


def test_the_chart_lints_clean_with_the_values_an_install_gives(tmp_path):
    assert problems(chart_with(tmp_path, INSTALL)) == []


def test_the_chart_lints_clean_with_existing_secrets_and_gpus_from_the_device_plugin(tmp_path):
    values = {
        "externalDatabase": {"existingSecret": "db"},
        "externalRedis": {"existingSecret": "redis", "agentUrl": "redis://redis.db.svc:6379/0"},
        "secretKey": {"existingSecret": "key"},
        "agent": {"gpus": 8},
        "persistence": {"existingClaim": "hangar-archive"},
        "extraEnv": {"HANGAR_AUDIT_HOT_DAYS": "365"},
    }
    assert problems(chart_with(tmp_path, values)) == []


def test_the_chart_lints_clean_without_gateway_agent_ingress_or_persistence(tmp_path):
    values = {
        **INSTALL,
        "gateway": {"enabled": False},
        "agent": {"enabled": False},
        "ingress": {"enabled": False},
        "persistence": {"enabled": False},
    }
    assert problems(chart_with(tmp_path, values)) == []


def test_lint_sees_a_broken_template(tmp_path):
    """The checker itself: a template that renders to invalid YAML is an error."""
    chart = chart_with(tmp_path, INSTALL)
    assert problems(chart) == []
    (chart / "templates" / "broken.yaml").write_text("kind: ConfigMap\n  bad: [indent\n")
    assert [m.severity for m in problems(chart)] == [helm.ERROR]


def test_lint_sees_a_template_that_does_not_render(tmp_path):
    chart = chart_with(tmp_path, INSTALL)
    (chart / "templates" / "broken.yaml").write_text("{{ .Values.nothing.deeper }}\n")
    assert [m.severity for m in problems(chart)] == [helm.ERROR]
