from django.db import models


class NodeMetricMinute(models.Model):
    """One minute of a node's telemetry: {series: [min, mean, max]}, with a 4th
    item, the series' own sample count, where it differs from `samples`
    (series.merge_minutes uses it to merge parts of a minute exactly).

    One row per node and minute (rather than per series) keeps a 30-day history
    of a 100-node site at about 4 million rows.
    """

    node = models.ForeignKey("inventory.Node", on_delete=models.CASCADE, related_name="+")
    minute = models.DateTimeField()
    samples = models.PositiveSmallIntegerField()
    series = models.JSONField()

    policy_cluster_path = "node__cluster"

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["node", "minute"], name="metric_node_minute")
        ]
        indexes = [models.Index(fields=["minute"])]

    def __str__(self) -> str:
        return f"node {self.node_id} at {self.minute:%Y-%m-%d %H:%M}"
