# Signed job rows: every stored job state carries an HMAC of (id, state), and nothing is
# unpickled unless it verifies (see django_apscheduler/signing.py and docs/security.md).
# The rows that exist when `migrate` runs are signed as they are: the operator who runs
# `migrate` is trusted, and the rows' contents are not inspected (nor unpickled).

from django.db import migrations, models

#: Rows signed per query batch.
BATCH = 500


def sign_existing_rows(apps, schema_editor):
    from django_apscheduler import signing

    job_model = apps.get_model("django_apscheduler", "DjangoJob")
    using = schema_editor.connection.alias
    jobs = job_model.objects.using(using)
    ids = list(jobs.filter(job_signature__isnull=True).order_by("id").values_list("id", flat=True))
    for start in range(0, len(ids), BATCH):
        batch = ids[start : start + BATCH]
        for job_id, state in jobs.filter(id__in=batch).values_list("id", "job_state"):
            jobs.filter(id=job_id).update(job_signature=signing.sign(job_id, state))


class Migration(migrations.Migration):
    dependencies = [
        ("django_apscheduler", "0012_djangoschedulerinstance_declared_ids"),
    ]

    operations = [
        migrations.AddField(
            model_name="djangojob",
            name="job_signature",
            field=models.CharField(
                blank=True,
                editable=False,
                help_text="HMAC-SHA256 of the id and state, keyed from SECRET_KEY.",
                max_length=64,
                null=True,
            ),
        ),
        migrations.RunPython(sign_existing_rows, migrations.RunPython.noop, elidable=False),
    ]
