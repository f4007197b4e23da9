from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies: list[tuple[str, str]] = []

    operations = [
        migrations.CreateModel(
            name="ScheduledJob",
            fields=[
                ("job_id", models.CharField(max_length=255, primary_key=True, serialize=False)),
                ("due_at", models.DateTimeField(db_index=True)),
            ],
            options={"verbose_name": "scheduled job", "ordering": ["due_at"]},
        ),
    ]
