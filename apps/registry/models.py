"""Models and their versions: what can be deployed, with every file's checksum."""

from __future__ import annotations

from django.db import models


class Task(models.TextChoices):
    CHAT = "chat"
    COMPLETION = "completion"
    EMBEDDING = "embedding"


class Model(models.Model):
    name = models.CharField(max_length=200, unique=True)
    family = models.CharField(
        max_length=200, blank=True, default="", help_text="e.g. DeepSeek-R1-Distill-Qwen-7B"
    )
    task = models.CharField(max_length=16, choices=Task.choices, default=Task.CHAT)
    description = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class VersionState(models.TextChoices):
    DRAFT = "draft"  # registered; checksums being computed
    READY = "ready"  # immutable, deployable
    RETIRED = "retired"


class ArtifactFormat(models.TextChoices):
    SAFETENSORS = "safetensors"
    GGUF = "gguf"
    OTHER = "other"


class ModelVersion(models.Model):
    """One immutable version: files under an allowed model root, each with its SHA-256."""

    model = models.ForeignKey(Model, on_delete=models.PROTECT, related_name="versions")
    label = models.CharField(max_length=100)
    path = models.CharField(max_length=1000, help_text="A directory under HANGAR_MODEL_ROOTS.")
    format = models.CharField(max_length=16, choices=ArtifactFormat.choices)
    quantization = models.CharField(max_length=50, blank=True, default="")
    parameter_count = models.BigIntegerField(null=True, blank=True)
    size_bytes = models.BigIntegerField(default=0)
    files = models.JSONField(default=list, blank=True)  # [{"path", "size", "sha256"}]
    state = models.CharField(
        max_length=16, choices=VersionState.choices, default=VersionState.DRAFT
    )
    progress = models.JSONField(default=dict, blank=True)  # {"done_bytes", "total_bytes"}
    error = models.CharField(max_length=500, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    ready_at = models.DateTimeField(null=True, blank=True)

    # Fields frozen once the version is ready.
    IMMUTABLE = (
        "model_id",
        "label",
        "path",
        "format",
        "quantization",
        "parameter_count",
        "size_bytes",
        "files",
    )

    class Meta:
        ordering = ["model__name", "-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["model", "label"], name="version_label_unique")
        ]

    def __str__(self) -> str:
        return f"{self.model.name}:{self.label}"

    def save(self, *args, **kwargs):
        frozen = getattr(self, "_frozen", None)
        if frozen:
            changed = sorted(f for f, v in frozen.items() if getattr(self, f) != v)
            if changed:
                raise ValueError(f"version {self} is immutable; refused change of {changed}")
        super().save(*args, **kwargs)

    @classmethod
    def from_db(cls, db, field_names, values):
        instance = super().from_db(db, field_names, values)
        if instance.__dict__.get("state") in (VersionState.READY, VersionState.RETIRED):
            instance._frozen = {f: instance.__dict__.get(f) for f in cls.IMMUTABLE}
        return instance
