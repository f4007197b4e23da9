"""URLs of the shop: the orders app, login/logout, the admin and the ergate console."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("", include("orders.urls")),
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
    path("ergate/", include("ergate_celery.contrib.django.urls")),  # staff only
]
