"""Forms of the mail account pages. Password fields never render a value back."""

import ipaddress
import json
import re

from django import forms

from crm.records import PlainLabels
from mailsync.accounts import providers
from mailsync.models import Security

LOOPBACK_NAMES = {"localhost", "localhost.localdomain"}
_HOST_RE = re.compile(r"^[A-Za-z0-9.\-_\[\]:]+$")


def is_loopback(host: str) -> bool:
    host = host.strip().strip("[]").lower()
    if host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def clean_server_host(value: str) -> str:
    """A server name as typed ("IMAP.Example.com " -> "imap.example.com"); ValidationError when it is not one."""
    host = (value or "").strip().lower()
    if host and (not _HOST_RE.match(host) or "://" in host):
        raise forms.ValidationError("Enter a server name such as imap.example.com (no http:// or spaces).")
    return host


def security_problem(host: str, security: str) -> str:
    """Why this host / security pair is refused ("" when it is fine). The same rule for the owner's form and
    the admin: mail credentials never travel unencrypted over a network (A4); a local bridge is fine."""
    if host and security == Security.NONE and not is_loopback(host):
        return (
            "Unencrypted connections are only allowed to a server on this computer (localhost). "
            "Choose SSL/TLS or STARTTLS."
        )
    return ""


def check_servers(form: forms.Form, data: dict) -> None:
    """Add the security errors of the IMAP and SMTP host / security pairs in `data` to `form`."""
    for prefix in ("imap", "smtp"):
        problem = security_problem(data.get(f"{prefix}_host", ""), data.get(f"{prefix}_security", ""))
        if problem:
            form.add_error(f"{prefix}_security", problem)


class PasswordField(forms.CharField):
    widget = forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"})

    def __init__(self, **kwargs):
        kwargs.setdefault("strip", False)  # spaces can be part of a password
        kwargs.setdefault("max_length", 4096)
        super().__init__(**kwargs)


class AddAccountForm(PlainLabels, forms.Form):
    email_address = forms.EmailField(
        label="Email address", max_length=320, widget=forms.EmailInput(attrs={"autocomplete": "email"})
    )
    password = PasswordField(
        label="Password",
        required=False,
        help_text="Your mailbox password, or an app password if your provider asks for one.",
    )
    provider = forms.ChoiceField(
        label="Provider",
        required=False,
        choices=[("", "Detect from my address"), *providers.choices()],
    )
    username = forms.CharField(
        label="Username", required=False, max_length=320, help_text="Leave empty to use your email address."
    )
    imap_host = forms.CharField(label="IMAP server", required=False, max_length=253)
    imap_port = forms.IntegerField(label="IMAP port", required=False, min_value=1, max_value=65535, initial=993)
    imap_security = forms.ChoiceField(
        label="IMAP security", choices=Security.choices, initial=Security.SSL, required=False
    )
    smtp_host = forms.CharField(
        label="SMTP server",
        required=False,
        max_length=253,
        help_text="For sending from the CRM. Reading works without it.",
    )
    smtp_port = forms.IntegerField(label="SMTP port", required=False, min_value=1, max_value=65535, initial=465)
    smtp_security = forms.ChoiceField(
        label="SMTP security", choices=Security.choices, initial=Security.SSL, required=False
    )

    SERVER_FIELDS = ("username", "imap_host", "imap_port", "imap_security", "smtp_host", "smtp_port", "smtp_security")

    def __init__(self, *args, kept_password: str = "", default_ports: dict | None = None, **kwargs):
        """`kept_password`: the password of the owner's last failed try (kept server-side, never rendered):
        used when the field comes back empty. `default_ports`: {(protocol, security): port}, which a script
        (static/js/app.js) applies to a port field when its security choice changes."""
        super().__init__(*args, **kwargs)
        self.kept_password = ""
        if kept_password:
            self.show_password_kept(kept_password)
        for protocol in ("imap", "smtp"):
            ports = {security: port for (name, security), port in (default_ports or {}).items() if name == protocol}
            if ports:
                self.fields[f"{protocol}_security"].widget.attrs.update(
                    {"data-default-ports": json.dumps(ports), "data-port-field": f"id_{protocol}_port"}
                )

    def show_password_kept(self, password: str) -> None:
        """The password is kept server-side: the (empty) field says so and an empty submit uses it."""
        self.kept_password = password
        self.fields["password"].widget = PasswordField.widget.__class__(
            render_value=False,
            attrs={"autocomplete": "new-password", "placeholder": "Kept from your last try: type to change it"},
        )

    def clean_email_address(self) -> str:
        return self.cleaned_data["email_address"].strip().lower()

    def clean_imap_host(self) -> str:
        return clean_server_host(self.cleaned_data.get("imap_host", ""))

    def clean_smtp_host(self) -> str:
        return clean_server_host(self.cleaned_data.get("smtp_host", ""))

    def clean(self):
        data = super().clean()
        for prefix in ("imap", "smtp"):
            data[f"{prefix}_security"] = data.get(f"{prefix}_security") or Security.SSL
        if not data.get("password") and self.kept_password:
            data["password"] = self.kept_password
        elif not data.get("password"):
            self.add_error("password", "Enter the password (or app password) of the mailbox.")
        check_servers(self, data)
        return data

    @property
    def has_custom_servers(self) -> bool:
        return bool(self.cleaned_data.get("imap_host"))


class TrustedCertificateForm(PlainLabels, forms.Form):
    """A company CA (validated by mailsync.accounts.certificates)."""

    name = forms.CharField(label="Name", max_length=200)
    hosts = forms.CharField(
        label="Server names",
        max_length=2000,
        help_text="The mail servers it is trusted for, separated by spaces: mail.example.com or *.example.com.",
    )
    pem = forms.CharField(
        label="Certificate (PEM)",
        max_length=65536,
        strip=False,
        widget=forms.Textarea(attrs={"rows": 8, "spellcheck": "false"}),
        help_text="The CA's public certificate, from -----BEGIN CERTIFICATE----- to -----END CERTIFICATE-----.",
    )


class ReauthForm(PlainLabels, forms.Form):
    password = PasswordField(label="New password", help_text="Or a new app password if your provider asks for one.")


class FolderSelectionForm(PlainLabels, forms.Form):
    """S2: sync every folder (Junk and Drafts excepted) or only the chosen ones."""

    ALL = "all"
    SELECTED = "selected"

    mode = forms.ChoiceField(
        choices=[(ALL, "Sync all emails"), (SELECTED, "Only these folders")], widget=forms.RadioSelect
    )
    folders = forms.TypedMultipleChoiceField(coerce=int, required=False, widget=forms.CheckboxSelectMultiple)

    def __init__(self, *args, folders=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["folders"].choices = [(folder.pk, folder.name) for folder in folders]

    def clean(self):
        data = super().clean()
        if data.get("mode") == self.SELECTED and not data.get("folders"):
            self.add_error("folders", "Choose at least one folder, or sync all emails.")
        return data


class PastSyncForm(PlainLabels, forms.Form):
    """S4: how far back, and whether only mail with CRM contacts is wanted."""

    months = forms.TypedChoiceField(
        label="How far back",
        coerce=int,
        choices=[(1, "1 month"), (3, "3 months"), (6, "6 months"), (12, "1 year")],
        initial=3,
    )
    only_contacts = forms.BooleanField(label="Only emails with CRM contacts", required=False)


class MailPreferencesForm(PlainLabels, forms.Form):
    """Per-user preferences; the choices come from MailSettings so the form and the model agree."""

    linking_mode = forms.ChoiceField(widget=forms.RadioSelect)
    default_visibility = forms.ChoiceField(widget=forms.RadioSelect)
    email_link_preference = forms.ChoiceField(widget=forms.RadioSelect)
    track_by_default = forms.BooleanField(required=False, label="Track opens and clicks of new messages")

    def __init__(self, *args, **kwargs):
        from mailsync.models import EmailThread, MailSettings

        super().__init__(*args, **kwargs)
        self.fields["linking_mode"].choices = MailSettings.LinkingMode.choices
        self.fields["default_visibility"].choices = EmailThread.Visibility.choices
        self.fields["email_link_preference"].choices = MailSettings.LinkPreference.choices
