# Leases, versions and scheduler instances: several schedulers may share one database.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("django_apscheduler", "0001_squashed_0009_djangojobexecution_unique_job_executions"),
    ]

    operations = [
        migrations.CreateModel(
            name="DjangoSchedulerInstance",
            fields=[
                (
                    "id",
                    models.CharField(
                        help_text="host:pid:random",
                        max_length=255,
                        primary_key=True,
                        serialize=False,
                    ),
                ),
                ("host", models.CharField(max_length=255)),
                ("pid", models.IntegerField()),
                ("started", models.DateTimeField()),
                ("last_heartbeat", models.DateTimeField(db_index=True)),
            ],
            options={
                "verbose_name": "scheduler instance",
                "ordering": ("started",),
            },
        ),
        migrations.AddField(
            model_name="djangojob",
            name="acquired_by",
            field=models.CharField(
                blank=True,
                db_index=True,
                editable=False,
                help_text="The scheduler instance that holds this job (dispatching or running it).",
                max_length=255,
                null=True,
            ),
        ),
        migrations.AddField(
            model_name="djangojob",
            name="acquired_until",
            field=models.DateTimeField(
                blank=True,
                editable=False,
                help_text="When the hold ends unless its scheduler instance renews it.",
                null=True,
            ),
        ),
        migrations.AddField(
            model_name="djangojob",
            name="version",
            field=models.PositiveIntegerField(
                editable=False,
                help_text="Incremented by every write, so concurrent changes are detected.",
                null=True,
            ),
        ),
        migrations.AddField(
            model_name="djangojobexecution",
            name="instance",
            field=models.CharField(
                blank=True,
                db_index=True,
                help_text="The scheduler instance that submitted this run.",
                max_length=255,
                null=True,
            ),
        ),
        migrations.AlterField(
            model_name="djangojobexecution",
            name="status",
            field=models.CharField(
                choices=[
                    ("Started execution", "Started execution"),
                    ("Error!", "Error!"),
                    ("Executed", "Executed"),
                    ("Interrupted", "Interrupted"),
                ],
                help_text="The current status of this job execution.",
                max_length=50,
            ),
        ),
    ]
