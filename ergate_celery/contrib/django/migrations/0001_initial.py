from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies: list[tuple[str, str]] = []

    operations = [
        migrations.CreateModel(
            name="JobIndexEntry",
            fields=[
                ("job_id", models.CharField(max_length=255, primary_key=True, serialize=False)),
                ("kind", models.CharField(max_length=16)),
                ("at", models.DateTimeField()),
            ],
            options={
                "verbose_name": "job index entry",
                "verbose_name_plural": "job index",
                "indexes": [models.Index(fields=["kind", "at"], name="ergate_index_kind_at")],
            },
        ),
    ]
