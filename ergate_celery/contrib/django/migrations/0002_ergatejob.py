from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("ergate_celery", "0001_initial"),
        ("django_celery_results", "0014_alter_taskresult_status"),
    ]

    operations = [
        migrations.CreateModel(
            name="ErgateJob",
            fields=[],
            options={"verbose_name": "ergate job", "proxy": True, "indexes": [], "constraints": []},
            bases=("django_celery_results.taskresult",),
        ),
    ]
