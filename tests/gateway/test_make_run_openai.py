"""Done means, as a newcomer would do it: a fresh `make run`, a deployment of the
reference engine, a route and a key over the API, then the `openai` client,
unchanged, through the gateway URL that `make run` printed."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal

import openai

from tests.support import processes
from tests.support.browserless import Session, admin_password


def api(session: Session, method: str, path: str, body: dict | None = None):
    status, raw, _ = session.request(
        method,
        path,
        json.dumps(body).encode() if body is not None else b"",
        {
            "Content-Type": "application/json",
            "X-CSRFToken": session.csrf_token(),
            "Referer": session.base_url + "/",
        },
    )
    return status, json.loads(raw) if raw else None


def test_the_openai_client_reaches_a_reference_deployment_of_a_fresh_make_run(tmp_path):
    models = tmp_path / "models"
    (models / "minilm" / "v1").mkdir(parents=True)
    (models / "minilm" / "v1" / "model.safetensors").write_bytes(os.urandom(1024 * 1024))
    port, redis_port = processes.free_port(), processes.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HANGAR_")}
    env.update(
        {
            "HANGAR_DATA_DIR": str(tmp_path / "data"),
            "HANGAR_BIND": f"127.0.0.1:{port}",
            "HANGAR_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "HANGAR_GATEWAY_BIND": f"127.0.0.1:{processes.free_port()}",
            "HANGAR_GATEWAY_ADMIN_BIND": f"127.0.0.1:{processes.free_port()}",
            "HANGAR_MODEL_ROOTS": str(models),
            "HANGAR_DEMO": "false",  # the newcomer's own route, not the first-run demo's
            "PATH": f"{processes.BIN}{os.pathsep}{env['PATH']}",
            "PYTHONUNBUFFERED": "1",
        }
    )
    log = tmp_path / "serve.log"
    serve = processes.start([str(processes.BIN / "python"), "manage.py", "serve"], env, log)
    session = Session(f"http://127.0.0.1:{port}")
    worker_pids: list[int] = []
    try:
        processes.wait_for(
            lambda: session.request("GET", "/healthz")[0] == 200,
            timeout=120,
            what="the console",
            process=serve,
        )
        output = log.read_text()
        gateway_url = re.search(r"gateway.*?(http://\S+/v1)", output, re.I).group(1)
        session.first_admin_login(admin_password(output))
        processes.wait_for(
            lambda: session.json("/api/v1/nodes/")["results"][0]["state"] == "online",
            timeout=90,
            what="the local node online",
        )
        node = session.json("/api/v1/nodes/")["results"][0]
        cluster = node["cluster"]

        status, model = api(
            session, "POST", "/api/v1/models/", {"name": "minilm", "task": "embedding"}
        )
        assert status == 201, model
        status, version = api(
            session,
            "POST",
            "/api/v1/model-versions/",
            {"model": model["id"], "label": "v1", "path": str(models / "minilm" / "v1"),
             "format": "safetensors"},
        )  # fmt: skip
        assert status == 201, version
        processes.wait_for(
            lambda: session.json(f"/api/v1/model-versions/{version['id']}/")["state"] == "ready",
            timeout=60,
            what="the version checksummed",
        )
        status, deployment = api(
            session,
            "POST",
            "/api/v1/deployments/",
            {"name": "minilm", "cluster": cluster, "model_version": version["id"],
             "engine": "reference", "engine_args": [], "replicas": 1,
             "port": processes.free_port(),
             "placement": {"mode": "auto", "gpus_per_replica": 1, "min_free_gib": 0}},
        )  # fmt: skip
        assert status == 201, deployment
        processes.wait_for(
            lambda: (
                [
                    w["state"]
                    for w in session.json(f"/api/v1/workers/?deployment={deployment['id']}")[
                        "results"
                    ]
                ]
                == ["ready"]
            ),
            timeout=120,
            what="the worker ready",
        )
        worker_pids += [
            w["pid"]
            for w in session.json(f"/api/v1/workers/?deployment={deployment['id']}")["results"]
        ]
        status, route = api(
            session,
            "POST",
            "/api/v1/routes/",
            {"name": "minilm", "targets": [{"deployment": deployment["id"], "weight": 100}]},
        )
        assert status == 201, route
        status, created = api(
            session, "POST", "/api/v1/consumer-keys/", {"name": "notebook", "days": 7,
                                                        "all_routes": True}
        )  # fmt: skip
        assert status == 201, created

        client = openai.OpenAI(base_url=gateway_url, api_key=created["key"], max_retries=0)

        def listed():
            return [m.id for m in client.models.list()] == ["minilm"]

        processes.wait_for(listed, timeout=30, what="the gateway to serve the new route")
        completion = client.completions.create(model="minilm", prompt="hello", max_tokens=8)
        assert completion.choices[0].text and completion.usage.completion_tokens <= 8
        chat = client.chat.completions.create(
            model="minilm", messages=[{"role": "user", "content": "hello there"}]
        )
        assert chat.choices[0].message.role == "assistant" and chat.choices[0].message.content
        streamed = "".join(
            chunk.choices[0].delta.content or ""
            for chunk in client.chat.completions.create(
                model="minilm", messages=[{"role": "user", "content": "hello there"}], stream=True
            )
            if chunk.choices
        )
        assert streamed == chat.choices[0].message.content
        embedding = client.embeddings.create(model="minilm", input=["a campus", "a library"])
        assert len(embedding.data) == 2 and len(embedding.data[0].embedding) == 384
    finally:
        serve.send_signal(signal.SIGINT)
        try:
            serve.wait(40)
        finally:
            processes.stop(serve)
            for pid in worker_pids:  # inference workers outlive the agent by design
                with contextlib.suppress(ProcessLookupError, PermissionError, TypeError):
                    os.killpg(pid, signal.SIGKILL)
