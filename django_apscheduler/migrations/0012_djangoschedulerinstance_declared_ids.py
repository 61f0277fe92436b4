# Each scheduler instance records the ids it declares in code, so that during a rolling
# deploy one release's sync does not remove the jobs another live release declares.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("django_apscheduler", "0011_djangojob_declared_in_code"),
    ]

    operations = [
        migrations.AddField(
            model_name="djangoschedulerinstance",
            name="declared_ids",
            field=models.JSONField(
                blank=True,
                editable=False,
                help_text="Ids of the jobs this instance's code declares with @scheduled_job.",
                null=True,
            ),
        ),
    ]
