"""REST API routes of the knowledge base (mounted under /api/; /api/kb/search is chatbot.evaluation.urls)."""

from django.urls import path
from rest_framework.routers import SimpleRouter

from kb.api import views

router = SimpleRouter()
router.register("kb/entries", views.EntryViewSet, basename="kb-entry")
router.register("kb/variants", views.VariantViewSet, basename="kb-variant")

urlpatterns = [
    path("kb/import", views.ImportView.as_view(), name="kb-import"),
    path("kb/import/jobs/<uuid:job_id>", views.ImportJobView.as_view(), name="kb-import-job"),
    *router.urls,
]
