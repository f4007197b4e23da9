"""The staff console: `path("ergate/", include("ergate_celery.contrib.django.urls"))`."""

from django.urls import path

from ergate_celery.contrib.django import views

app_name = "ergate_celery"

urlpatterns = [
    path("", views.job_list, name="job_list"),
    path("workflows/", views.workflow_list, name="workflow_list"),
    path("workflows/<str:name>/", views.workflow_detail, name="workflow_detail"),
    # Job ids may hold slashes; the job page takes its actions by POST at the same address.
    path("jobs/<path:job_id>/", views.job_detail, name="job_detail"),
]
