"""The `hangar-gateway` process: the OpenAI-compatible door to the deployments.

It imports nothing of Django: it serves from the snapshot the console publishes
in Redis (apps/gateway/snapshot.py) and never queries the database.
"""
