"""URLs of the orders app."""

from django.urls import path

from . import views

app_name = "orders"

urlpatterns = [
    path("", views.job_list, name="job_list"),
    path("orders/new/", views.order_new, name="order_new"),
    path("jobs/<uuid:job_id>/", views.job_detail, name="job_detail"),
    path("jobs/<uuid:job_id>.json", views.job_json, name="job_json"),
    path("jobs/<uuid:job_id>/cancel/", views.job_cancel, name="job_cancel"),
    path("approvals/", views.approvals, name="approvals"),
    path("approvals/<uuid:job_id>/", views.approval_decide, name="approval_decide"),
]
