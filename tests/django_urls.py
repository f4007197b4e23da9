from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("ergate/", include("ergate_celery.contrib.django.urls")),
]
