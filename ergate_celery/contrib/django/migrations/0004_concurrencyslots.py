from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("ergate_celery", "0003_listing_tags_paused"),
    ]

    operations = [
        migrations.CreateModel(
            name="ConcurrencySlots",
            fields=[
                ("name", models.CharField(max_length=500, primary_key=True, serialize=False)),
                ("document", models.TextField()),
            ],
            options={
                "verbose_name": "concurrency slots",
                "verbose_name_plural": "concurrency slots",
            },
        ),
    ]
