"""The agent `make run` starts for the console's own machine."""

from __future__ import annotations

from pathlib import Path

from apps.audit import recorder
from apps.inventory import broker
from apps.inventory.models import Cluster
from apps.inventory.services import create_enrollment_token, enroll_node, node_for_credential

LOCAL_CLUSTER = "local"
SIMULATED_GPUS = 2


def enroll_local_agent(state_dir: Path, console_url: str) -> bool:
    """Enroll this machine unless its credential still works.

    Done in-process rather than over HTTP because the console is not up yet.
    Returns True when a new credential was written.
    """
    from agents.enroll import EnrollError, read_credential, write_credential
    from agents.host import facts as host_facts

    try:
        existing = read_credential(state_dir)
    except EnrollError:
        existing = None
    node = node_for_credential(existing["credential"]) if existing else None
    if node is not None:
        # Still valid: bring its broker fields up to date (the embedded Redis may have
        # moved, or the file predates node-scoped broker identities).
        fields = broker.credential_fields(node.pk, existing["credential"])
        if any(existing.get(key) != value for key, value in fields.items()):
            write_credential(state_dir, {**existing, **fields})
        return False
    cluster, _ = Cluster.objects.get_or_create(
        name=LOCAL_CLUSTER, defaults={"description": "The machine the console runs on."}
    )
    _token, secret = create_enrollment_token(cluster, None, hours=1, description="make run")
    hostname = host_facts().get("hostname") or "localhost"
    node, credential = enroll_node(secret, hostname, {}, None)
    recorder.record(
        "inventory.enroll", target=node, changes={"cluster": cluster.name, "via": "make run"}
    )
    write_credential(
        state_dir,
        {
            "console": console_url,
            "node_id": node.pk,
            "credential": credential,
            **broker.credential_fields(node.pk, credential),
        },
    )
    return True


def local_gpu_flags() -> tuple[list[str], str]:
    """Real GPUs through NVML when this machine has them, else simulated ones."""
    try:
        import pynvml

        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        pynvml.nvmlShutdown()
    except Exception:
        count = 0
    if count:
        return [], f"Local agent: {count} NVIDIA GPU(s) found; sampling them through NVML."
    return ["--simulate", str(SIMULATED_GPUS)], (
        f"Local agent: no NVIDIA GPU here; simulating {SIMULATED_GPUS} GPUs (labelled simulated)."
    )
