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
}


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
