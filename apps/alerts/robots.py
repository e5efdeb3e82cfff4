"""Group robots of WeCom (企业微信), DingTalk (钉钉) and Feishu (飞书): their message
formats, signing schemes and answers.

Each service documents its own webhook (docs/alerts.md cites the pages followed):

- WeCom: no signature; the robot's key is in the URL (`.../webhook/send?key=...`).
  Body `{"msgtype": "markdown", "markdown": {"content": ...}}`.
- DingTalk: with "加签", `sign` = urlencode(base64(HMAC-SHA256(key=secret,
  msg=timestamp + "\\n" + secret))), timestamp in milliseconds, both appended to
  the URL as `&timestamp=...&sign=...`. Body `{"msgtype": "markdown",
  "markdown": {"title", "text"}}`.
- Feishu: with "签名校验", string_to_sign = timestamp + "\\n" + secret is the HMAC
  key over an empty message; base64; timestamp in seconds; both go in the JSON
  body as `timestamp` and `sign`. Body `{"msg_type": "post", "content": {...}}`.

All three answer HTTP 200 even when they refuse a message; the JSON answer's
`errcode` (WeCom, DingTalk) or `code` (Feishu) is 0 only on success.

The message is written at send time from the delivery's stored payload, in the
receiver's language; only the signature's timestamp changes between retries
(the services reject old timestamps: DingTalk after an hour, Feishu too).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import urllib.parse

from django.utils import translation
from django.utils.translation import gettext as _

from apps.alerts.models import Receiver

# WeCom's markdown content is at most 4096 bytes; DingTalk's and Feishu's limits are larger.
MAX_TEXT_BYTES = 4000


def dingtalk_sign(secret: str, timestamp_ms: int) -> str:
    """The `sign` query value, already urlencoded, for a DingTalk robot with 加签."""
    mac = hmac.new(secret.encode(), f"{timestamp_ms}\n{secret}".encode(), hashlib.sha256)
    return urllib.parse.quote_plus(base64.b64encode(mac.digest()).decode())


def feishu_sign(secret: str, timestamp_s: int) -> str:
    """The body's `sign` for a Feishu robot with 签名校验: the key is
    timestamp + "\\n" + secret and the message is empty, as Feishu documents it."""
    mac = hmac.new(f"{timestamp_s}\n{secret}".encode(), b"", hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()


def _event_word(event: str) -> str:
    return {
        "firing": _("Firing"),
        "acknowledged": _("Acknowledged"),
        "resolved": _("Resolved"),
    }.get(event, event)


def _severity_word(severity: str) -> str:
    return {"info": _("info"), "warning": _("warning"), "critical": _("critical")}.get(
        severity, severity
    )


def message(payload: dict) -> tuple[str, list[str], str]:
    """(title, lines, link label) of a notification, in the active language."""
    alert = payload["alert"]
    title = _("[Hangar %(severity)s] %(event)s: %(rule)s") % {
        "severity": _severity_word(alert["severity"]),
        "event": _event_word(payload["event"]),
        "rule": alert["rule"]["name"],
    }
    where = (
        alert["node"]["name"]
        if alert.get("node")
        else (alert.get("deployment") or {}).get("name", "")
    )
    lines = [
        _("Where: %(where)s (cluster %(cluster)s)")
        % {"where": where, "cluster": alert["cluster"]["name"]},
        _("Value: %(summary)s") % {"summary": alert["summary"]},
        _("Since: %(started)s") % {"started": alert["started_at"]},
    ]
    if alert.get("detail"):
        lines.append(_("Detail: %(detail)s") % {"detail": alert["detail"]})
    if alert.get("acknowledged_by"):
        lines.append(
            _("Acknowledged by %(user)s: %(note)s")
            % {"user": alert["acknowledged_by"], "note": alert.get("note", "")}
        )
    return title, lines, _("Open in Hangar")


def _clip(text: str) -> str:
    data = text.encode()
    if len(data) <= MAX_TEXT_BYTES:
        return text
    return data[: MAX_TEXT_BYTES - 3].decode(errors="ignore") + "..."


def _link(payload: dict) -> str:
    alert = payload["alert"]
    return alert.get("page_url") or alert["url"]


def request(receiver: Receiver, payload: dict, now_ms: int) -> tuple[str, dict]:
    """(URL, JSON body) of the POST to the receiver's robot, signed where it has a secret."""
    with translation.override(receiver.language):
        title, lines, link_label = message(payload)
    link = _link(payload)
    if receiver.kind == Receiver.Kind.WECOM:
        text = "\n".join([f"**{title}**", *(f"> {line}" for line in lines)])
        text += f"\n[{link_label}]({link})"
        return receiver.url, {"msgtype": "markdown", "markdown": {"content": _clip(text)}}
    if receiver.kind == Receiver.Kind.DINGTALK:
        text = "\n\n".join([f"#### {title}", *lines, f"[{link_label}]({link})"])
        url = receiver.url
        if receiver.secret:
            sep = "&" if "?" in url else "?"
            url += f"{sep}timestamp={now_ms}&sign={dingtalk_sign(receiver.secret, now_ms)}"
        return url, {"msgtype": "markdown", "markdown": {"title": title, "text": _clip(text)}}
    if receiver.kind == Receiver.Kind.FEISHU:
        paragraphs = [[{"tag": "text", "text": _clip(line)}] for line in lines]
        paragraphs.append([{"tag": "a", "text": link_label, "href": link}])
        # "zh_cn" / "en_us" say which language the post is in; a client shows the one it has.
        locale = "zh_cn" if receiver.language.startswith("zh") else "en_us"
        body: dict = {
            "msg_type": "post",
            "content": {"post": {locale: {"title": title, "content": paragraphs}}},
        }
        if receiver.secret:
            now_s = now_ms // 1000
            body = {"timestamp": str(now_s), "sign": feishu_sign(receiver.secret, now_s), **body}
        return receiver.url, body
    raise ValueError(f"{receiver.kind!r} is not a group robot")


def refusal(kind: str, answer: bytes) -> str:
    """Why the robot refused the message, from its JSON answer; empty if it took it."""
    try:
        data = json.loads(answer or b"{}")
    except ValueError:
        return f"an answer that is not JSON: {answer[:200]!r}"
    if not isinstance(data, dict):
        return f"an unexpected answer: {answer[:200]!r}"
    code_field = "code" if kind == Receiver.Kind.FEISHU else "errcode"
    code = data.get(code_field, data.get("StatusCode", 0))
    if code in (0, None):
        return ""
    text = data.get("msg") or data.get("errmsg") or ""
    return f"{code_field} {code}: {text}"[:500]


def redacted(url: str) -> str:
    """The URL without what authorises it (WeCom's key, DingTalk's access token and
    signature in the query, Feishu's hook id in the path), for errors shown to people."""
    parts = urllib.parse.urlsplit(url)
    path = parts.path
    if "/hook/" in path:
        path = path[: path.index("/hook/") + len("/hook/")] + "..."
    query = "..." if parts.query else ""
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, query, ""))
