"""Who may use the knowledge-base API: reading needs kb.view_*, writing the matching Django model
permission (the "KB editors" group has them all; superusers have every permission)."""

from __future__ import annotations

from rest_framework.permissions import BasePermission, DjangoModelPermissions

VIEW_PERMISSION = "%(app_label)s.view_%(model_name)s"


class KbModelPermissions(DjangoModelPermissions):
    """DjangoModelPermissions that also requires view_<model> to read.

    DRF's default lets any authenticated user read; knowledge-base drafts and phrasings are not
    for every account (staff included), so reading is a permission of its own."""

    perms_map = {
        **DjangoModelPermissions.perms_map,
        "GET": [VIEW_PERMISSION],
        "HEAD": [VIEW_PERMISSION],
        "OPTIONS": [VIEW_PERMISSION],
    }


class HasPermissions(BasePermission):
    """An authenticated user holding every permission in ``required`` (for views without a model)."""

    required: tuple[str, ...] = ()

    def has_permission(self, request, view) -> bool:
        user = request.user
        return bool(user and user.is_authenticated and user.has_perms(self.required))


class CanSearchKb(HasPermissions):
    """Search shows entries and their questions, so it needs the same permission as reading them."""

    required = ("kb.view_entry",)


class CanImportKb(HasPermissions):
    """An import creates and updates entries and replaces their phrasings (even a dry run shows
    what an import would do, so it is for editors too)."""

    required = (
        "kb.add_entry",
        "kb.change_entry",
        "kb.add_variant",
        "kb.change_variant",
        "kb.delete_variant",
    )
