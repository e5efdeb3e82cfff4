"""What inventory tells the apps above it, without importing them (docs/architecture.md,
"Imports"): telemetry pushes node states to browsers and drops revoked agents'
sockets, alerts judges node.offline. Their AppConfig.ready() connects the receivers."""

from django.dispatch import Signal

# After transition_node moved a node: sender=Node, node (its new state set), old_state.
node_state_changed = Signal()
# After revoke_node_credential: sender=Node, node. The agent's socket must close now.
node_credential_revoked = Signal()
# After edit_node changed a person-editable field (name, labels, cluster): sender=Node,
# node. The agent's socket re-reads its node (a moved node streams to its new cluster).
node_edited = Signal()
# After apply_health changed a GPU's health: sender=GPU, gpu, old_health, reasons, policy.
# Deployments moves the GPU's workers when it turned unhealthy and the policy says so.
gpu_health_changed = Signal()
