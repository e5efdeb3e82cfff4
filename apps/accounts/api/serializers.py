from __future__ import annotations

from django.contrib.auth import get_user_model, password_validation
from django.utils.translation import gettext as _
from rest_framework import serializers

from apps.accounts.models import ApiToken, RoleBinding
from apps.accounts.services import SeparationError, check_separation


class UserSerializer(serializers.ModelSerializer):
    password = serializers.CharField(
        write_only=True, required=False, style={"input_type": "password"}
    )
    source = serializers.SerializerMethodField()

    class Meta:
        model = get_user_model()
        fields = [
            "id",
            "username",
            "first_name",
            "last_name",
            "email",
            "is_active",
            "last_login",
            "date_joined",
            "source",
            "password",
        ]
        read_only_fields = ["id", "last_login", "date_joined", "is_active"]

    def get_source(self, user) -> str:
        return "ldap" if not user.has_usable_password() else "local"

    def validate(self, attrs):
        password = attrs.get("password")
        if self.instance is None and not password:
            raise serializers.ValidationError({"password": _("A local account needs a password.")})
        if password:
            candidate = self.instance or get_user_model()(
                **{k: v for k, v in attrs.items() if k != "password"}
            )
            try:
                password_validation.validate_password(password, candidate)
            except Exception as exc:
                raise serializers.ValidationError({"password": list(exc.messages)}) from None
        return attrs

    def create(self, validated):
        password = validated.pop("password")
        user = get_user_model()(**validated)
        user.set_password(password)
        user.save()
        return user

    def update(self, user, validated):
        # Only the columns this edit sets: a deactivation (or a login) since the
        # request loaded `user` must not be written back as it was then.
        password = validated.pop("password", None)
        fields = list(validated)
        for key, value in validated.items():
            setattr(user, key, value)
        if password:
            user.set_password(password)
            fields.append("password")
        user.save(update_fields=fields)
        return user


class RoleBindingSerializer(serializers.ModelSerializer):
    class Meta:
        model = RoleBinding
        fields = ["id", "role", "user", "ldap_group", "cluster", "created_at"]
        read_only_fields = ["id", "created_at"]

    def validate_ldap_group(self, value: str) -> str:
        value = value.strip().lower()
        if value and "=" not in value:
            raise serializers.ValidationError(
                _(
                    "Give the group's full DN (cn=gpu-ops,ou=groups,dc=example,dc=org) "
                    "or a single sign-on group (cas:edupersonaffiliation=staff, "
                    "oidc:groups=gpu-admins)."
                )
            )
        return value

    def validate(self, attrs):
        if bool(attrs.get("user")) == bool(attrs.get("ldap_group")):
            raise serializers.ValidationError(
                _("Bind the role to exactly one subject: a user or an LDAP group DN.")
            )
        exists = RoleBinding.objects.filter(
            role=attrs["role"],
            user=attrs.get("user"),
            ldap_group=attrs.get("ldap_group", ""),
            cluster=attrs.get("cluster"),
        ).exists()
        if exists:
            raise serializers.ValidationError(_("This role binding exists already."))
        try:
            check_separation(attrs["role"], attrs.get("user"), attrs.get("ldap_group", ""))
        except SeparationError as refused:
            raise serializers.ValidationError({"role": [str(refused)]}) from refused
        return attrs


class ApiTokenSerializer(serializers.ModelSerializer):
    days = serializers.IntegerField(
        write_only=True, min_value=1, default=90, help_text="Days until the token expires."
    )
    state = serializers.CharField(read_only=True)

    class Meta:
        model = ApiToken
        fields = [
            "id",
            "name",
            "prefix",
            "created_at",
            "expires_at",
            "revoked_at",
            "last_used_at",
            "state",
            "days",
        ]
        read_only_fields = [
            "id",
            "prefix",
            "created_at",
            "expires_at",
            "revoked_at",
            "last_used_at",
        ]


class ApiTokenCreatedSerializer(ApiTokenSerializer):
    secret = serializers.CharField(read_only=True, help_text="Shown once; store it now.")

    class Meta(ApiTokenSerializer.Meta):
        fields = [*ApiTokenSerializer.Meta.fields, "secret"]
