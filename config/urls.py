"""Top-level URL routes."""

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from chatbot import views as chatbot_views
from chatbot import widget_views

urlpatterns = [
    path("", chatbot_views.demo_page, name="demo"),
    # These three are answered by chatbot.middleware.ProbeMiddleware, before the host check.
    path("healthz", chatbot_views.healthz, name="healthz"),
    path("readyz", chatbot_views.readyz, name="readyz"),
    path("metrics", chatbot_views.metrics, name="metrics"),
    path("chat/protocol.schema.json", chatbot_views.protocol_schema, name="chat-protocol-schema"),
    # The embed tag's stable URL: a loader that adds the versioned widget files (chatbot.widget_views).
    path("widget.js", widget_views.widget_js, name="widget-js"),
    path("widget/sites/<str:key>.json", chatbot_views.widget_site_config, name="widget-site-config"),
    path("faq/<int:entry_id>", chatbot_views.faq_entry, name="faq-entry"),
    path("admin/", admin.site.urls),
    path("ops/", include("ops.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/", include("chatbot.evaluation.urls")),
    path("api/", include("kb.api.urls")),
]
