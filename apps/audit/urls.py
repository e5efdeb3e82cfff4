from django.urls import path

from apps.audit import pages

urlpatterns = [
    path("audit/", pages.audit_log, name="audit-log"),
    path("audit/chain/", pages.chain_state, name="audit-chain"),
]
