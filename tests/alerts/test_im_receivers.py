"""WeCom, DingTalk and Feishu group robots: a local server checks each message the way
the service documents it (format, signature, timestamp window) and answers as it does.

The checks are written here from the services' documentation (docs/alerts.md cites it),
not with apps/alerts/robots.py's own functions, so a wrong signature fails.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import urllib.parse
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.utils import timezone

from apps.alerts import services
from apps.alerts.models import Delivery, Receiver, Silence
from apps.inventory.models import Node
from tests.alerts.conftest import make_rule

HOT = {"gpu.0.temperature": 95.0}
COOL = {"gpu.0.temperature": 40.0}
DING_SECRET = "SEC0123456789abcdef"
FEISHU_SECRET = "feishu-signing-secret"
WECOM_KEY = "693a91f6-7xxx-4bc4-97a0-0ec2sifa5aaa"
ONE_HOUR_MS = 3600 * 1000


class Robots:
    """What the three fake services accepted or refused, and why."""

    def __init__(self):
        self.accepted: list[tuple[str, dict]] = []
        self.refused: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def judge(self, service: str, query: dict, body: dict) -> dict:
        check = getattr(self, f"_check_{service}")
        reason = check(query, body)
        with self.lock:
            if reason:
                self.refused.append((service, reason))
            else:
                self.accepted.append((service, body))
        code = "code" if service == "feishu" else "errcode"
        return (
            {code: 0, "msg" if service == "feishu" else "errmsg": "ok"}
            if not reason
            else {
                code: 310000 if service == "dingtalk" else 19021 if service == "feishu" else 93000,
                "msg" if service == "feishu" else "errmsg": reason,
            }
        )

    @staticmethod
    def _check_wecom(query: dict, body: dict) -> str:
        # developer.work.weixin.qq.com/document/path/91770: key in the URL, no signature.
        if query.get("key") != [WECOM_KEY]:
            return "invalid webhook url"
        if body.get("msgtype") != "markdown" or set(body) != {"msgtype", "markdown"}:
            return "invalid msgtype"
        content = body["markdown"].get("content", "")
        if not content or len(content.encode()) > 4096:
            return "markdown.content exceed max length 4096"
        return ""

    @staticmethod
    def _check_dingtalk(query: dict, body: dict) -> str:
        # open.dingtalk.com: sign = urlencode(base64(HmacSHA256(secret, ts + "\n" + secret))),
        # ts in ms and within one hour; both in the query string.
        if query.get("access_token") != ["ding-token"]:
            return "token is not exist"
        timestamp, sign = query.get("timestamp", [""])[0], query.get("sign", [""])[0]
        if not timestamp.isdigit() or abs(time.time() * 1000 - int(timestamp)) > ONE_HOUR_MS:
            return "invalid timestamp"
        mac = hmac.new(
            DING_SECRET.encode(), f"{timestamp}\n{DING_SECRET}".encode(), hashlib.sha256
        ).digest()
        # parse_qs already undid the urlencoding the sender had to apply.
        if not hmac.compare_digest(base64.b64encode(mac).decode(), sign):
            return "sign not match"
        if body.get("msgtype") != "markdown" or not {"title", "text"} <= set(body["markdown"]):
            return "param error"
        return ""

    @staticmethod
    def _check_feishu(query: dict, body: dict) -> str:
        # open.feishu.cn: string_to_sign = ts + "\n" + secret is the HMAC-SHA256 key over
        # an empty message, base64; ts in seconds within one hour; both in the body.
        timestamp, sign = str(body.get("timestamp", "")), body.get("sign", "")
        if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > 3600:
            return "sign match fail or timestamp is not within one hour from current time"
        mac = hmac.new(f"{timestamp}\n{FEISHU_SECRET}".encode(), b"", hashlib.sha256).digest()
        if not hmac.compare_digest(base64.b64encode(mac).decode(), sign):
            return "sign match fail or timestamp is not within one hour from current time"
        if body.get("msg_type") != "post":
            return "params error, msg_type need"
        (post,) = body["content"]["post"].values()
        if not post.get("title") or not isinstance(post.get("content"), list):
            return "params error"
        return ""


@pytest.fixture
def robots():
    state = Robots()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            url = urllib.parse.urlsplit(self.path)
            raw = self.rfile.read(int(self.headers["Content-Length"]))
            service = {
                "/cgi-bin/webhook/send": "wecom",
                "/robot/send": "dingtalk",
            }.get(url.path, "feishu" if url.path.startswith("/open-apis/bot/v2/hook/") else "")
            if not service or self.headers.get("Content-Type") != "application/json":
                self.send_response(404)
                self.end_headers()
                return
            answer = state.judge(service, urllib.parse.parse_qs(url.query), json.loads(raw))
            data = json.dumps(answer).encode()
            self.send_response(200)  # all three answer 200, refusals included
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state.base = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()


def robot(robots, kind: str, language: str = "en", **fields) -> Receiver:
    url = {
        "wecom": f"{robots.base}/cgi-bin/webhook/send?key={WECOM_KEY}",
        "dingtalk": f"{robots.base}/robot/send?access_token=ding-token",
        "feishu": f"{robots.base}/open-apis/bot/v2/hook/0f3b-hook-id",
    }[kind]
    secret = {"wecom": "", "dingtalk": DING_SECRET, "feishu": FEISHU_SECRET}[kind]
    return Receiver.objects.create(
        **{"name": kind, "kind": kind, "url": url, "secret": secret, "language": language, **fields}
    )


@pytest.fixture
def node(cluster):
    return Node.objects.create(cluster=cluster, hostname="gpu-a1", state="online")


@pytest.fixture
def eager_celery(monkeypatch):
    from apps.alerts import tasks
    from console.celery import app

    monkeypatch.setattr(tasks, "MAX_ATTEMPTS", 2)
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = False


def fire(node, receivers, capture, values=HOT):
    make_rule(receivers=receivers)
    with capture(execute=True):
        services.evaluate_values(node, values)


def text_of(kind: str, body: dict) -> str:
    if kind == "wecom":
        return body["markdown"]["content"]
    if kind == "dingtalk":
        return body["markdown"]["title"] + "\n" + body["markdown"]["text"]
    (post,) = body["content"]["post"].values()
    return json.dumps(post, ensure_ascii=False)


@pytest.mark.parametrize("kind", ["wecom", "dingtalk", "feishu"])
def test_each_robot_gets_a_message_it_accepts_with_a_link_back_to_the_alert(
    kind, robots, node, eager_celery, django_capture_on_commit_callbacks, settings
):
    settings.HANGAR_PUBLIC_URL = "https://hangar.example.edu.cn"
    fire(node, [robot(robots, kind)], django_capture_on_commit_callbacks)

    assert robots.refused == []
    ((service, body),) = robots.accepted
    assert service == kind
    delivery = Delivery.objects.get()
    assert (delivery.state, delivery.attempts) == ("sent", 1)
    text = text_of(kind, body)
    alert_id = delivery.alert_id
    assert f"https://hangar.example.edu.cn/alerts/?state=all&id={alert_id}" in text
    assert "hot GPU" in text and "gpu.0.temperature = 95 (> 85)" in text and "gpu-a1" in text
    assert "Firing" in text and "critical" in text


@pytest.mark.parametrize("kind", ["wecom", "dingtalk", "feishu"])
def test_a_robot_set_to_chinese_gets_the_message_in_chinese(
    kind, robots, node, eager_celery, django_capture_on_commit_callbacks
):
    fire(node, [robot(robots, kind, language="zh-hans")], django_capture_on_commit_callbacks)

    ((_, body),) = robots.accepted
    text = text_of(kind, body)
    assert "告警中" in text and "严重" in text and "在 Hangar 中打开" in text
    assert "Firing" not in text
    if kind == "feishu":
        assert list(body["content"]["post"]) == ["zh_cn"]


def test_the_resolution_of_a_notified_alert_reaches_the_robot_too(
    robots, node, eager_celery, django_capture_on_commit_callbacks
):
    fire(node, [robot(robots, "dingtalk")], django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=True):
        services.evaluate_values(node, COOL)

    titles = [body["markdown"]["title"] for _, body in robots.accepted]
    assert [t.split("] ")[1].split(":")[0] for t in titles] == ["Firing", "Resolved"]


@pytest.mark.parametrize("kind", ["dingtalk", "feishu"])
def test_a_wrong_secret_is_a_refusal_that_is_retried_and_recorded(
    kind, robots, node, eager_celery, django_capture_on_commit_callbacks
):
    fire(
        node,
        [robot(robots, kind, secret="not-the-robots-secret")],
        django_capture_on_commit_callbacks,
    )

    assert robots.accepted == []
    assert len(robots.refused) == 2  # MAX_ATTEMPTS, through the same retry as webhooks
    delivery = Delivery.objects.get()
    assert (delivery.state, delivery.attempts) == ("failed", 2)
    assert "refused the message" in delivery.last_error
    assert ("sign not match" if kind == "dingtalk" else "sign match fail") in delivery.last_error


def test_a_wrong_wecom_key_is_refused_and_the_error_does_not_show_the_key(
    robots, node, eager_celery, django_capture_on_commit_callbacks
):
    receiver = robot(robots, "wecom", url=f"{robots.base}/cgi-bin/webhook/send?key=wrong-key")
    fire(node, [receiver], django_capture_on_commit_callbacks)

    delivery = Delivery.objects.get()
    assert delivery.state == "failed"
    assert "errcode 93000: invalid webhook url" in delivery.last_error
    assert "wrong-key" not in delivery.last_error


def test_an_unreachable_robot_error_hides_its_token(
    node, eager_celery, django_capture_on_commit_callbacks
):
    receiver = Receiver.objects.create(
        name="ding", kind="dingtalk", url="http://127.0.0.1:9/robot/send?access_token=tok-123"
    )
    fire(node, [receiver], django_capture_on_commit_callbacks)

    delivery = Delivery.objects.get()
    assert delivery.last_error.startswith("could not reach http://127.0.0.1:9/robot/send?...")
    assert "tok-123" not in delivery.last_error


def test_a_silence_holds_back_robot_messages_like_webhooks(
    robots, node, cluster, eager_celery, django_capture_on_commit_callbacks
):
    Silence.objects.create(
        cluster=cluster,
        starts_at=timezone.now(),
        ends_at=timezone.now() + timedelta(hours=1),
        reason="maintenance window",
    )
    fire(node, [robot(robots, "feishu")], django_capture_on_commit_callbacks)

    assert robots.accepted == [] and Delivery.objects.count() == 0


def test_the_api_creates_robot_receivers_and_refuses_what_cannot_work(admin_api):
    made = admin_api.post(
        "/api/v1/receivers/",
        {
            "name": "ops-ding",
            "kind": "dingtalk",
            "url": "https://oapi.dingtalk.com/robot/send?access_token=abc",
            "secret": DING_SECRET,
            "language": "zh-hans",
        },
        format="json",
    )
    assert made.status_code == 201, made.content
    assert made.json()["has_secret"] and made.json()["language"] == "zh-hans"
    assert "secret" not in made.json()

    no_url = admin_api.post("/api/v1/receivers/", {"name": "f", "kind": "feishu"}, format="json")
    assert no_url.status_code == 400 and "url" in no_url.json()["fields"]
    signed_wecom = admin_api.post(
        "/api/v1/receivers/",
        {"name": "w", "kind": "wecom", "url": "https://qyapi.weixin.qq.com/x?key=k", "secret": "s"},
        format="json",
    )
    assert signed_wecom.status_code == 400 and "secret" in signed_wecom.json()["fields"]
    bad_language = admin_api.post(
        "/api/v1/receivers/",
        {"name": "l", "kind": "wecom", "url": "https://qyapi.weixin.qq.com/x", "language": "fr"},
        format="json",
    )
    assert bad_language.status_code == 400 and "language" in bad_language.json()["fields"]
