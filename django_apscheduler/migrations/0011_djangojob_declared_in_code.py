# Jobs declared in code (@scheduled_job) are marked, so removing a declaration removes its job.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("django_apscheduler", "0010_coordination"),
    ]

    operations = [
        migrations.AddField(
            model_name="djangojob",
            name="declared_in_code",
            field=models.BooleanField(
                editable=False,
                help_text="Declared with @scheduled_job: removed when its declaration is.",
                null=True,
            ),
        ),
    ]
