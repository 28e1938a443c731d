"""Settings > Email templates and Signatures, and what the composer asks of them (W3).

Thin views: access check (template_selectors) -> form -> template_services -> POST-redirect-GET. The
editor is static/js/rich-editor.js (no inline code: the pages run under a CSP); without JavaScript the
body is a plain text area of HTML that is sanitised on save.
"""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import FileResponse, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from crm.models import Visibility
from crm.params import parse_id
from crm.records import is_partial_request
from mailsync.linking.rules import visible_record

from . import smart_fields, template_selectors, template_services

MAX_RECIPIENTS_FOR_FIELDS = 100


class TemplateForm(forms.Form):
    name = forms.CharField(max_length=200, widget=forms.TextInput(attrs={"autocomplete": "off"}))
    subject = forms.CharField(max_length=500, required=False, widget=forms.TextInput(attrs={"autocomplete": "off"}))
    body_html = forms.CharField(
        label="Body", required=False, max_length=200_000, widget=forms.Textarea(attrs={"rows": 10})
    )
    visibility = forms.ChoiceField(
        label="Shared with",
        choices=[
            (Visibility.OWNER, "Only me"),
            (Visibility.TEAM, "My team"),
            (Visibility.COMPANY, "Everyone in the company"),
        ],
        initial=Visibility.OWNER,
    )


class SignatureForm(forms.Form):
    name = forms.CharField(max_length=100, widget=forms.TextInput(attrs={"autocomplete": "off"}))
    body_html = forms.CharField(
        label="Signature", required=False, max_length=100_000, widget=forms.Textarea(attrs={"rows": 6})
    )
    default_for_new = forms.BooleanField(label="Default for new mail", required=False)
    default_for_replies = forms.BooleanField(label="Default for replies and forwards", required=False)


class SenderDetailsForm(forms.Form):
    job_title = forms.CharField(label="Your job title", max_length=150, required=False)
    phone = forms.CharField(label="Your phone", max_length=50, required=False)


def _error_text(error: ValidationError) -> str:
    return " ".join(error.messages)


# -- templates


@require_GET
def template_list(request: HttpRequest) -> HttpResponse:
    query = request.GET.get("q", "")[:200]
    templates = list(template_selectors.templates_for(request.user, query)[:200])
    details = template_selectors.sender_details(request.user)
    context = {
        "templates": templates,
        "query": query,
        "sender_form": SenderDetailsForm(
            initial={"job_title": details.sender_job_title, "phone": details.sender_phone}
        ),
    }
    if is_partial_request(request):
        return render(request, "mailsync/email_templates/_template_rows.html", context)
    return render(request, "mailsync/email_templates/list.html", context)


def _editor_context(form: forms.Form, **extra) -> dict:
    return {"form": form, "catalogue": smart_fields.CATALOGUE, **extra}


@require_http_methods(["GET", "POST"])
def template_create(request: HttpRequest) -> HttpResponse:
    form = TemplateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            template = template_services.create_template(user=request.user, **form.cleaned_data)
        except ValidationError as error:
            form.add_error(None, _error_text(error))
        else:
            messages.success(request, f"Template \u201c{template.name}\u201d saved.")
            return redirect("mailsync:email_templates")
    return render(request, "mailsync/email_templates/form.html", _editor_context(form, creating=True))


@require_http_methods(["GET", "POST"])
def template_edit(request: HttpRequest, pk: int) -> HttpResponse:
    template = template_selectors.get_own_template(request.user, pk)
    initial = {
        "name": template.name,
        "subject": template.subject,
        "body_html": template.body_html,
        "visibility": template.visibility,
    }
    form = TemplateForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            template_services.update_template(user=request.user, template=template, **form.cleaned_data)
        except ValidationError as error:
            form.add_error(None, _error_text(error))
        else:
            messages.success(request, f"Template \u201c{template.name}\u201d saved.")
            return redirect("mailsync:email_templates")
    return render(request, "mailsync/email_templates/form.html", _editor_context(form, template=template))


@require_POST
def template_duplicate(request: HttpRequest, pk: int) -> HttpResponse:
    template = template_selectors.get_template_for_user(request.user, pk)
    try:
        copy = template_services.duplicate_template(user=request.user, template=template)
    except ValidationError as error:
        messages.error(request, _error_text(error))
        return redirect("mailsync:email_templates")
    messages.success(request, f"\u201c{copy.name}\u201d is your own copy: change it as you like.")
    return redirect("mailsync:email_template_edit", pk=copy.pk)


@require_http_methods(["GET", "POST"])
def template_delete(request: HttpRequest, pk: int) -> HttpResponse:
    template = template_selectors.get_own_template(request.user, pk)
    if request.method == "POST":
        template_services.delete_template(user=request.user, template=template)
        messages.success(request, f"Template \u201c{template.name}\u201d deleted.")
        return redirect("mailsync:email_templates")
    return render(request, "mailsync/email_templates/confirm_delete.html", {"template": template})


@require_POST
def sender_details(request: HttpRequest) -> HttpResponse:
    form = SenderDetailsForm(request.POST)
    if form.is_valid():
        template_services.update_sender_details(user=request.user, **form.cleaned_data)
        messages.success(request, "Your details for smart fields are saved.")
    else:
        messages.error(
            request, "Your details were not saved: " + " ".join(e for errs in form.errors.values() for e in errs)
        )
    return redirect("mailsync:email_templates")


# -- signatures


@require_GET
def signature_list(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "mailsync/email_templates/signatures.html",
        {"accounts": template_selectors.signature_accounts(request.user)},
    )


def _signature_form_page(request, form, *, account, signature=None) -> HttpResponse:
    return render(
        request,
        "mailsync/email_templates/signature_form.html",
        _editor_context(form, account=account, signature=signature),
    )


@require_http_methods(["GET", "POST"])
def signature_create(request: HttpRequest, account_pk: int) -> HttpResponse:
    account = template_selectors.get_own_account(request.user, account_pk)
    form = SignatureForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            signature = template_services.save_signature(user=request.user, account=account, **form.cleaned_data)
        except ValidationError as error:
            form.add_error(None, _error_text(error))
        else:
            messages.success(request, f"Signature \u201c{signature.name}\u201d saved. Add an image to it if you like.")
            return redirect("mailsync:signature_edit", pk=signature.pk)
    return _signature_form_page(request, form, account=account)


@require_http_methods(["GET", "POST"])
def signature_edit(request: HttpRequest, pk: int) -> HttpResponse:
    signature = template_selectors.get_own_signature(request.user, pk)
    initial = {
        "name": signature.name,
        "body_html": signature.body_html,
        "default_for_new": signature.is_default_for_new,
        "default_for_replies": signature.is_default_for_replies,
    }
    form = SignatureForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            template_services.save_signature(
                user=request.user, account=signature.account, signature=signature, **form.cleaned_data
            )
        except ValidationError as error:
            form.add_error(None, _error_text(error))
        else:
            messages.success(request, f"Signature \u201c{signature.name}\u201d saved.")
            return redirect("mailsync:signatures")
    return _signature_form_page(request, form, account=signature.account, signature=signature)


@require_POST
def signature_delete(request: HttpRequest, pk: int) -> HttpResponse:
    signature = template_selectors.get_own_signature(request.user, pk)
    template_services.delete_signature(user=request.user, signature=signature)
    messages.success(request, f"Signature \u201c{signature.name}\u201d deleted.")
    return redirect("mailsync:signatures")


@require_POST
def signature_image_upload(request: HttpRequest, pk: int) -> HttpResponse:
    """The editor uploads an image and gets the URL to put into the signature (JSON)."""
    signature = template_selectors.get_own_signature(request.user, pk)
    upload = request.FILES.get("image")
    if upload is None:
        return JsonResponse({"error": "Choose an image to upload."}, status=400)
    try:
        image = template_services.add_signature_image(user=request.user, signature=signature, upload=upload)
    except ValidationError as error:
        return JsonResponse({"error": _error_text(error)}, status=400)
    return JsonResponse({"url": signature_image_url(image.pk)})


def signature_image_url(pk: int) -> str:
    return reverse("mailsync:signature_image", args=[pk])


@require_GET
def signature_image(request: HttpRequest, pk: int) -> HttpResponse:
    image = template_selectors.get_own_signature_image(request.user, pk)
    response = FileResponse(image.file.open("rb"), content_type=image.content_type)
    response["X-Content-Type-Options"] = "nosniff"
    response["Cache-Control"] = "private, max-age=3600"
    return response


# -- for the composer


@require_GET
def template_picker(request: HttpRequest) -> HttpResponse:
    """The composer's template search: a list of templates to insert (htmx fragment)."""
    query = request.GET.get("q", "")[:200]
    templates = list(template_selectors.templates_for(request.user, query)[:30])
    return render(request, "mailsync/email_templates/_picker.html", {"templates": templates, "query": query})


@require_GET
def template_fill(request: HttpRequest, pk: int) -> HttpResponse:
    """A template filled for the composer: subject and body with every field that could be filled, the
    missing ones marked. Sources: `to` (addresses), `record` (kind:id), `account` (the From account)."""
    template = template_selectors.get_template_for_user(request.user, pk)
    recipients = [a for a in request.GET.getlist("to") if a][:MAX_RECIPIENTS_FOR_FIELDS]
    account_pk = parse_id(request.GET.get("account", ""))
    account = template_selectors.own_account_or_none(request.user, account_pk)
    record = visible_record(request.user, request.GET.get("record", ""))
    sources = smart_fields.sources_for(request.user, recipients=recipients, record=record, account=account)
    values = smart_fields.values_for(sources)
    subject = smart_fields.render(template.subject, values, in_html=False)
    body = smart_fields.render(template.body_html, values, in_html=True, mark_missing=True)
    missing = list(dict.fromkeys(subject.missing + body.missing))
    return JsonResponse(
        {
            "subject": subject.text,
            "body_html": body.text,
            "missing": [{"field": key, "label": smart_fields.label_of(key)} for key in missing],
        }
    )
