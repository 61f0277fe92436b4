# The admin as an operations console: a paused job's note (why it was paused), and
# one permission per admin action (run here, run in the scheduler, pause/resume).
# It depends on 0012; migration 0013 (signed rows) comes from another branch and the
# merge points this dependency at it.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("django_apscheduler", "0013_djangojob_job_signature"),
    ]

    operations = [
        migrations.AlterModelOptions(
            name="djangojob",
            options={
                "ordering": ("next_run_time",),
                "permissions": [
                    ("run_djangojob", "Can run jobs now in the web process"),
                    ("trigger_djangojob", "Can have the schedulers run jobs now"),
                    ("pause_djangojob", "Can pause and resume jobs"),
                ],
            },
        ),
        migrations.AddField(
            model_name="djangojob",
            name="pause_note",
            field=models.CharField(
                blank=True,
                editable=False,
                help_text="Why the job was paused (shown until it is resumed).",
                max_length=1000,
                null=True,
            ),
        ),
    ]
