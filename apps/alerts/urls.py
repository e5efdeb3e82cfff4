from django.urls import path

from apps.alerts import views

urlpatterns = [
    path("alerts/", views.alert_list, name="alert-list"),
    path("alerts/count/", views.alert_count, name="alert-count"),
    path("alerts/<int:pk>/acknowledge/", views.alert_acknowledge, name="alert-acknowledge"),
    path("alerts/rules/", views.rule_list, name="alert-rule-list"),
    path("alerts/rules/new/", views.rule_create, name="alert-rule-create"),
    path("alerts/rules/<int:pk>/", views.rule_edit, name="alert-rule-edit"),
    path("alerts/rules/<int:pk>/enable/", views.rule_enable, name="alert-rule-enable"),
    path("alerts/rules/<int:pk>/delete/", views.rule_delete, name="alert-rule-delete"),
    path("alerts/silences/", views.silence_list, name="silence-list"),
    path("alerts/silences/new/", views.silence_create, name="silence-create"),
    path("alerts/silences/<int:pk>/expire/", views.silence_expire, name="silence-expire"),
    path("alerts/receivers/", views.receiver_list, name="receiver-list"),
    path("alerts/receivers/new/", views.receiver_create, name="receiver-create"),
    path("alerts/receivers/<int:pk>/", views.receiver_edit, name="receiver-edit"),
    path("alerts/receivers/<int:pk>/delete/", views.receiver_delete, name="receiver-delete"),
    path("alerts/deliveries/", views.delivery_list, name="delivery-list"),
]
