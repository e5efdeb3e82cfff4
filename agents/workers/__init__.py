"""Inference workers: the processes the agent starts, supervises and measures.

docs/protocol.md section 4 is the contract; docs/agent.md describes how the
pieces fit: `engines` (spec -> argument vector, the allowed flags as data),
`verify` (model path and checksums), `supervisor` (one thread per worker, in
the agent's main process), `control` (the local socket the Celery process
uses to reach the supervisor), `exits` (why a run ended), `prometheus` and
`latency` (p50/p95/p99), `gpu_release` (NVML check before a restart).
"""
