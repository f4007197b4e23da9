"""Admin for the user ↔ job links; the jobs themselves are listed by ergate_celery's admin
(and, as raw task results, by django-celery-results')."""

from __future__ import annotations

from django.contrib import admin

from .jobs import job_state
from .models import OrderJob


@admin.register(OrderJob)
class OrderJobAdmin(admin.ModelAdmin):
    list_display = ["job_id", "user", "created", "status"]
    list_filter = ["created"]
    list_select_related = ["user"]
    search_fields = ["job_id", "user__username", "user__email"]
    readonly_fields = ["job_id", "user", "created"]

    @admin.display(description="status")
    def status(self, obj: OrderJob) -> str:
        state = job_state(obj.job_id)
        return f"{state['status']} {state.get('percent', '')}".rstrip()
