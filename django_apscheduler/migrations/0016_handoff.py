# Runs handed to task workers (Django Tasks, Celery): the statuses "Queued" and "Lost",
# and where each run was handed to. Nullable columns without defaults: adding them
# rewrites no existing row.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("django_apscheduler", "0015_observability"),
    ]

    operations = [
        migrations.AlterField(
            model_name="djangojobexecution",
            name="status",
            field=models.CharField(
                choices=[
                    ("Started execution", "Started execution"),
                    ("Error!", "Error!"),
                    ("Executed", "Executed"),
                    ("Interrupted", "Interrupted"),
                    ("Queued", "Queued"),
                    ("Lost", "Lost"),
                ],
                help_text="The current status of this job execution.",
                max_length=50,
            ),
        ),
        migrations.AddField(
            model_name="djangojobexecution",
            name="task_backend",
            field=models.CharField(
                blank=True,
                help_text="The task engine and backend or queue this run was handed to.",
                max_length=255,
                null=True,
            ),
        ),
        migrations.AddField(
            model_name="djangojobexecution",
            name="task_id",
            field=models.CharField(
                blank=True,
                db_index=True,
                help_text="The id of the task this run was handed off as.",
                max_length=255,
                null=True,
            ),
        ),
        migrations.AddField(
            model_name="djangojobexecution",
            name="handed_off_at",
            field=models.DateTimeField(
                blank=True,
                help_text="When the task was enqueued (empty: not enqueued yet).",
                null=True,
            ),
        ),
        migrations.AddField(
            model_name="djangojobexecution",
            name="task_call",
            field=models.BinaryField(editable=False, null=True),
        ),
        migrations.AddIndex(
            model_name="djangojobexecution",
            index=models.Index(fields=["status", "handed_off_at"], name="dja_execution_handoff"),
        ),
    ]
