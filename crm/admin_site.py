"""The Django admin site of the CRM: support staff's tool, which never shows private mail (SPEC P1, O1).

Two rules hold for every model registered on it, including third-party ones:
- Delete confirmations (a record's "Delete" page and the list's "Delete selected" action) name only the
  objects being deleted and objects the admin could open anyway (models registered here); everything else
  the deletion reaches (messages, threads, participants, attachments, links...) is counted, never listed.
  Django's default page prints the `str()` of every related object: every subject, address and file name
  of a mailbox when a user or a mail account is deleted.
- Logging in goes through the product's login page (allauth), so the admin login has the same rate limits
  as every other login instead of being an unthrottled side door.
"""

from collections import defaultdict

from allauth.account.decorators import secure_admin_login
from django.contrib import admin
from django.db import router
from django.db.models import Model, ProtectedError, Q, RestrictedError
from django.db.models.deletion import Collector
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html
from django.utils.text import capfirst


def _admin_link(admin_site: admin.AdminSite, obj: Model) -> str:
    opts = obj._meta
    try:
        url = reverse(f"{admin_site.name}:{opts.app_label}_{opts.model_name}_change", args=[obj.pk])
    except NoReverseMatch:
        return f"{capfirst(opts.verbose_name)}: {obj}"
    return format_html('{}: <a href="{}">{}</a>', capfirst(opts.verbose_name), url, obj)


def _count_label(model: type[Model], count: int) -> str:
    opts = model._meta
    return f"{count} {opts.verbose_name if count == 1 else opts.verbose_name_plural}"


def cascade_counts(objs, using: str) -> tuple[dict[type[Model], int], list[Model]]:
    """How many rows of each model deleting `objs` removes (theirs included), and the objects that block
    it (PROTECT / RESTRICT). Uses the same Collector as the deletion itself, without loading the related
    rows' content (fast deletes are counted in SQL)."""
    collector = Collector(using=using, origin=objs)
    blocking: list[Model] = []
    try:
        collector.collect(objs)
    except (ProtectedError, RestrictedError) as error:
        blocking = list(error.protected_objects if isinstance(error, ProtectedError) else error.restricted_objects)
    pks: dict[type[Model], set] = defaultdict(set)
    for model, instances in collector.data.items():
        pks[model._meta.concrete_model].update(instance.pk for instance in instances)
    fast: dict[type[Model], list] = defaultdict(list)
    for queryset in collector.fast_deletes:
        fast[queryset.model._meta.concrete_model].append(queryset)
    counts: dict[type[Model], int] = {}
    for model in {*pks, *fast}:
        if model in fast:
            condition = Q(pk__in=list(pks[model])) if pks[model] else Q(pk__in=[])
            for queryset in fast[model]:
                condition |= Q(pk__in=queryset.values("pk"))
            counts[model] = model._base_manager.using(using).filter(condition).count()
        else:
            counts[model] = len(pks[model])
    return {model: count for model, count in counts.items() if count}, blocking


class PrivateDeletionMixin:
    """Counts-only delete confirmations (see the module docstring)."""

    def get_deleted_objects(self, objs, request):
        objs = list(objs)
        if not objs:
            return [], {}, set(), []
        admin_site = self.admin_site
        using = router.db_for_write(objs[0]._meta.model)
        counts, blocking = cascade_counts(objs, using)
        to_delete = [_admin_link(admin_site, obj) for obj in objs]
        selected_model = objs[0]._meta.concrete_model
        related = {model: count for model, count in counts.items() if model is not selected_model}
        if related:
            to_delete.append(
                "and the related items counted in the summary above, which are not listed: support staff "
                "never see mail content"
            )
        perms_needed = set()
        for model in counts:
            model_admin = admin_site._registry.get(model)
            if model_admin is not None and not model_admin.has_delete_permission(request):
                perms_needed.add(model._meta.verbose_name)
        model_count = {model._meta.verbose_name_plural: count for model, count in sorted(counts.items(), key=_by_name)}
        return to_delete, model_count, perms_needed, _blocking_labels(admin_site, blocking)


def _by_name(item) -> str:
    return str(item[0]._meta.verbose_name_plural)


def _blocking_labels(admin_site: admin.AdminSite, blocking: list[Model]) -> list[str]:
    """Objects that prevent the deletion: by name when the admin can open them anyway, else counted."""
    named = [_admin_link(admin_site, obj) for obj in blocking if admin_site.is_registered(type(obj))]
    hidden: dict[type[Model], int] = defaultdict(int)
    for obj in blocking:
        if not admin_site.is_registered(type(obj)):
            hidden[type(obj)] += 1
    return named + [_count_label(model, count) for model, count in sorted(hidden.items(), key=_by_name)]


class CRMAdminSite(admin.AdminSite):
    site_header = "CRM administration"
    site_title = "CRM admin"

    def register(self, model_or_iterable, admin_class=None, **options):
        # Every registration, ours and third-party apps', gets the counts-only delete confirmation.
        admin_class = admin_class or admin.ModelAdmin
        if not issubclass(admin_class, PrivateDeletionMixin):
            admin_class = type(admin_class.__name__, (PrivateDeletionMixin, admin_class), {})
        return super().register(model_or_iterable, admin_class, **options)

    def login(self, request, extra_context=None):
        return secure_admin_login(super().login)(request, extra_context)
