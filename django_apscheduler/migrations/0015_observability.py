# Observability: each job row notes the next run time last reported overdue, and when the
# failures an alert was mailed for began, so that an overdue episode and a failure alert
# are each reported once (a conditional update) whatever the number of schedulers.
# Nullable: no existing row is rewritten.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("django_apscheduler", "0014_djangojob_pause_note"),
    ]

    operations = [
        migrations.AddField(
            model_name="djangojob",
            name="overdue_reported",
            field=models.DateTimeField(
                blank=True,
                editable=False,
                help_text="The next run time that was reported overdue (once per overdue episode).",
                null=True,
            ),
        ),
        migrations.AddField(
            model_name="djangojob",
            name="alert_open_since",
            field=models.DateTimeField(
                blank=True,
                editable=False,
                help_text=(
                    "When the failures (or the overdue run) that an alert was sent for began."
                ),
                null=True,
            ),
        ),
    ]
