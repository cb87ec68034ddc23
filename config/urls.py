"""Top-level URL routes."""

from django.contrib import admin
from django.urls import path

from chatbot import views as chatbot_views

urlpatterns = [
    path("", chatbot_views.demo_page, name="demo"),
    path("healthz", chatbot_views.healthz, name="healthz"),
    path("admin/", admin.site.urls),
]
