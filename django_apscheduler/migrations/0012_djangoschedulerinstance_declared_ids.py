# Each scheduler instance records the jobs it declares in code (id -> fingerprint), so
# that during a rolling deploy one release's sync neither removes nor rewrites the jobs
# another live release declares.

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
                help_text=(
                    "The jobs this instance's code declares with @scheduled_job: "
                    "id -> fingerprint of the definition."
                ),
                null=True,
            ),
        ),
    ]
