from django.db import migrations


def install(apps, schema_editor):
    from apps.alerts.defaults import GATEWAY_RULES, install_default_rules

    install_default_rules(apps.get_model("alerts", "AlertRule"), GATEWAY_RULES)


class Migration(migrations.Migration):
    dependencies = [("alerts", "0005_alert_deployment")]

    operations = [migrations.RunPython(install, migrations.RunPython.noop)]
