"""Every refusal in OpenAI's error shape, built here only, in the reader's language."""

from __future__ import annotations

import json

from aiohttp import web

# Messages a person reads, in Simplified Chinese where the request asks for it.
ZH_HANS = {
    "Unknown path {path}.": "未知路径 {path}。",
    "Method {method} is not allowed on {path}.": "{path} 不支持 {method} 方法。",
    "Send a key as 'Authorization: Bearer hk-...'.": "请以 'Authorization: Bearer hk-...' 发送密钥。",
    "Keys go in the Authorization header, never in the URL.": "密钥只能放在 Authorization 请求头中，不能放在 URL 里。",
    "The key is not valid (unknown, revoked or expired).": "密钥无效（不存在、已吊销或已过期）。",
    "This key may not be used from {address}.": "此密钥不允许从 {address} 使用。",
    "This key may not use the model {model}.": "此密钥无权使用模型 {model}。",
    "The model {model} does not exist.": "模型 {model} 不存在。",
    "The request body is not a JSON object.": "请求体不是 JSON 对象。",
    "The request must name a model.": "请求必须指定 model。",
    "The request body is larger than {limit} bytes.": "请求体超过 {limit} 字节。",
    "No ready worker serves {model} right now; try again shortly.": "目前没有可用的工作进程提供 {model}，请稍后再试。",
    "The model's worker could not be reached.": "无法连接到模型的工作进程。",
    "The model's worker did not answer in time.": "模型的工作进程未能及时响应。",
    "The gateway cannot confirm keys right now (its view is {age:.0f} s old).": "网关目前无法确认密钥（其数据已过期 {age:.0f} 秒）。",
    "The gateway has no routes yet; the console has not published them.": "网关尚无路由信息，控制台尚未发布。",
    # limits (limits.py) and the queue (fairshare.py)
    "Rate limit reached: {limit} requests per minute for {subject}. Try again in {reset}.": "已达到速率限制：{subject}每分钟最多 {limit} 个请求。请在 {reset} 后重试。",
    "Rate limit reached: {limit} tokens per minute for {subject} ({used} used; this request may need {amount}). Try again in {reset}.": "已达到速率限制：{subject}每分钟最多 {limit} 个 token（已用 {used}，本请求可能需要 {amount}）。请在 {reset} 后重试。",
    "Daily budget reached: {limit} tokens per day for {subject} ({used} used; this request may need {amount}). It resets at {reset_at}.": "已达到每日额度：{subject}每天最多 {limit} 个 token（已用 {used}，本请求可能需要 {amount}）。额度将于 {reset_at} 重置。",
    "Weekly budget reached: {limit} tokens per week for {subject} ({used} used; this request may need {amount}). It resets at {reset_at}.": "已达到每周额度：{subject}每周最多 {limit} 个 token（已用 {used}，本请求可能需要 {amount}）。额度将于 {reset_at} 重置。",
    "Too many requests at once: {limit} at a time for {subject}. Wait for one to finish.": "并发请求过多：{subject}最多同时 {limit} 个请求。请等待已有请求完成。",
    "This request may need {amount} tokens, more than {subject} may use in a whole window ({limit}); lower max_tokens or shorten the prompt.": "本请求可能需要 {amount} 个 token，超过{subject}在一个周期内的上限（{limit}）；请减小 max_tokens 或缩短提示。",
    "The model {model} is busy: the request waited {waited:.0f} s in the queue. Try again shortly.": "模型 {model} 繁忙：请求已在队列中等待 {waited:.0f} 秒。请稍后再试。",
    "The model {model} is busy and its queue is full. Try again shortly.": "模型 {model} 繁忙，等待队列已满。请稍后再试。",
    "The gateway cannot check this key's limits right now.": "网关目前无法检查此密钥的用量限制。",
}

# Who a limit holds, as the refusal names it.
SUBJECTS = {
    "key": ("this key", "此密钥"),
    "user": ("your account", "您的账户"),
    "project": ("project {project}", "项目 {project} "),
    "each-member": ("each member of project {project}", "项目 {project} 的每位成员"),
    "each-key": ("each key of project {project}", "项目 {project} 的每个密钥"),
}


def subject_text(request: web.Request, scope: str, project: str) -> str:
    english, chinese = SUBJECTS[scope]
    template = chinese if language(request) == "zh-hans" else english
    return template.format(project=project)


def language(request: web.Request) -> str:
    accept = request.headers.get("Accept-Language", "")
    first = accept.split(",")[0].strip().lower()
    return "zh-hans" if first.startswith("zh") else "en"


def error(
    request: web.Request,
    status: int,
    message: str,
    kind: str,
    code: str | None,
    param: str | None = None,
    headers: dict | None = None,
    **values,
) -> web.Response:
    template = ZH_HANS.get(message, message) if language(request) == "zh-hans" else message
    body = {
        "error": {
            "message": template.format(**values),
            "type": kind,
            "param": param,
            "code": code,
        }
    }
    return web.Response(
        status=status,
        body=json.dumps(body, ensure_ascii=False).encode(),
        content_type="application/json",
        headers=headers,
    )
