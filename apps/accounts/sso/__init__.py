"""Single sign-on through CAS and OpenID Connect (docs/identity.md).

The protocols are spoken by django-cas-ng and mozilla-django-oidc; this package
holds what is Hangar's: turning attributes and claims into a user and directory
groups (identity), the two backends (cas, oidc), the login and logout views, and
their audit events.
"""
