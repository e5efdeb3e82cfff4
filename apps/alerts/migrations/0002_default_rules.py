from django.db import migrations


def install(apps, schema_editor):
    from apps.alerts.defaults import install_default_rules

    install_default_rules(apps.get_model("alerts", "AlertRule"))


class Migration(migrations.Migration):
    dependencies = [("alerts", "0001_initial")]

    operations = [migrations.RunPython(install, migrations.RunPython.noop)]
