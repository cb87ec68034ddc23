"""REST API routes of the evaluation tools (mounted under /api/, beside kb.api.urls)."""

from django.urls import path

from chatbot.evaluation import views

urlpatterns = [
    # Under kb/ as it always was: API clients see the knowledge base's search, wherever it lives.
    path("kb/search", views.SearchView.as_view(), name="kb-search"),
]
