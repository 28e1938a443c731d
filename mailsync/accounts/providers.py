"""Provider presets (SPEC A2), so a user types only address and password.

`detect_provider(address)` picks a preset by the address's domain, else by the domain's MX records
(hosted mail: Google Workspace, Microsoft 365, Zoho, Yandex 360, ...), else returns no preset and the
UI asks for the servers. DNS is asked with a short timeout; any DNS failure just means "ask the user".

Hosts may contain "{domain}" (hosting companies that serve mail as mail.<your domain>).
Attachment limits are the provider's documented per-message limits, rounded down (MB). Connection caps:
Gmail allows 15 simultaneous IMAP connections per user (Google's "IMAP usage limits"); Exchange Online's
throttling allows 20 concurrent IMAP connections per mailbox and Exchange Server's default
MaxConnectionsPerUser for IMAP4 is 16 (Set-ImapSettings): Microsoft 365 / Outlook.com get 16, under both.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

logger = logging.getLogger(__name__)

PASSWORD = "password"
APP_PASSWORD = "app_password"
OAUTH2 = "oauth2"
SSL = "ssl"
STARTTLS = "starttls"


@dataclass(frozen=True)
class ProviderPreset:
    key: str
    name: str
    imap_host: str
    smtp_host: str
    imap_port: int = 993
    imap_security: str = SSL
    smtp_port: int = 465
    smtp_security: str = SSL
    # How this provider is normally connected: "oauth2", "app_password" (two-step verification makes it
    # necessary, or the provider always requires one) or "password".
    auth_kind: str = PASSWORD
    oauth_provider: str = ""  # "google" / "microsoft": offers "Connect with ..." (A3)
    password_allowed: bool = True  # False: only OAuth2 works (Microsoft turned off passwords)
    attachment_limit_mb: int = 25
    # Simultaneous IMAP connections the provider allows one mailbox (None: unknown, the default applies;
    # mailsync.connection.limits enforces it across watchers and workers).
    max_connections: int | None = None
    domains: tuple[str, ...] = ()
    mx_patterns: tuple[str, ...] = ()  # suffixes of MX host names that identify a hosted domain
    needs_servers: bool = False  # the user must confirm / type the servers (self-hosted products)
    help_text: str = ""
    help_url: str = ""
    # Sending (mailsync.sending): the provider's SMTP server files a copy of what it sends in Sent itself
    # (an APPEND by us would make a second copy); 0 = no recipient limit known beyond the server's own.
    files_sent_mail: bool = False
    max_recipients: int = 0

    def for_domain(self, domain: str) -> ProviderPreset:
        """The preset with "{domain}" in the hosts filled in."""
        if "{domain}" not in self.imap_host + self.smtp_host:
            return self
        return replace(
            self,
            imap_host=self.imap_host.replace("{domain}", domain),
            smtp_host=self.smtp_host.replace("{domain}", domain),
        )

    @property
    def app_password_required(self) -> bool:
        return self.auth_kind == APP_PASSWORD


_APP_PASSWORD_2FA = "If two-step verification is on, your normal password will not work here: create an app password."

PRESETS: tuple[ProviderPreset, ...] = (
    ProviderPreset(
        key="gmail",
        name="Gmail",
        imap_host="imap.gmail.com",
        smtp_host="smtp.gmail.com",
        auth_kind=OAUTH2,
        oauth_provider="google",
        attachment_limit_mb=25,
        max_connections=15,
        domains=("gmail.com", "googlemail.com"),
        help_text="Connect with Google, or use an app password (needs two-step verification): "
        "Google Account > Security > 2-Step Verification > App passwords. IMAP must be on in Gmail settings.",
        help_url="https://myaccount.google.com/apppasswords",
        files_sent_mail=True,
        max_recipients=100,
    ),
    ProviderPreset(
        key="google_workspace",
        name="Google Workspace",
        imap_host="imap.gmail.com",
        smtp_host="smtp.gmail.com",
        auth_kind=OAUTH2,
        oauth_provider="google",
        attachment_limit_mb=25,
        max_connections=15,
        mx_patterns=("google.com", "googlemail.com", "smtp.google.com"),
        help_text="Connect with Google, or use an app password if your administrator allows them: "
        "Google Account > Security > 2-Step Verification > App passwords.",
        help_url="https://myaccount.google.com/apppasswords",
        files_sent_mail=True,
        max_recipients=100,
    ),
    ProviderPreset(
        key="yahoo",
        name="Yahoo! Mail",
        imap_host="imap.mail.yahoo.com",
        smtp_host="smtp.mail.yahoo.com",
        auth_kind=APP_PASSWORD,
        attachment_limit_mb=25,
        domains=(
            "yahoo.com",
            "yahoo.co.uk",
            "yahoo.fr",
            "yahoo.de",
            "yahoo.it",
            "yahoo.es",
            "yahoo.ca",
            "yahoo.com.au",
            "yahoo.co.in",
            "yahoo.com.br",
            "yahoo.com.mx",
            "yahoo.ie",
            "yahoo.se",
            "yahoo.nl",
            "ymail.com",
            "rocketmail.com",
        ),
        mx_patterns=("yahoodns.net",),
        help_text="Yahoo requires an app password for other mail programs: Account Info > Account Security > "
        "Generate app password.",
        help_url="https://login.yahoo.com/account/security",
    ),
    ProviderPreset(
        key="office365",
        name="Office 365 / Microsoft 365",
        imap_host="outlook.office365.com",
        smtp_host="smtp.office365.com",
        smtp_port=587,
        smtp_security=STARTTLS,
        auth_kind=OAUTH2,
        oauth_provider="microsoft",
        password_allowed=False,
        attachment_limit_mb=25,
        max_connections=16,
        mx_patterns=("mail.protection.outlook.com", "protection.outlook.com", "outlook.com"),
        help_text="Microsoft 365 accepts only sign-in with Microsoft (passwords are turned off for IMAP). "
        "Your administrator may have to allow IMAP and authenticated SMTP for your mailbox.",
        help_url="https://learn.microsoft.com/exchange/clients-and-mobile-in-exchange-online/pop3-and-imap4/"
        "enable-or-disable-pop3-or-imap4-access",
        files_sent_mail=True,
        max_recipients=500,
    ),
    ProviderPreset(
        key="exchange",
        name="Microsoft Exchange (own server)",
        imap_host="mail.{domain}",
        smtp_host="mail.{domain}",
        smtp_port=587,
        smtp_security=STARTTLS,
        attachment_limit_mb=10,
        needs_servers=True,
        help_text="Exchange must have IMAP and authenticated SMTP enabled by your administrator, who can tell "
        "you the server names.",
    ),
    ProviderPreset(
        key="outlook",
        name="Outlook.com (Hotmail)",
        imap_host="outlook.office365.com",
        smtp_host="smtp-mail.outlook.com",
        smtp_port=587,
        smtp_security=STARTTLS,
        auth_kind=OAUTH2,
        oauth_provider="microsoft",
        password_allowed=False,
        attachment_limit_mb=20,
        max_connections=16,
        domains=(
            "outlook.com",
            "hotmail.com",
            "live.com",
            "msn.com",
            "passport.com",
            "hotmail.co.uk",
            "hotmail.fr",
            "hotmail.de",
            "hotmail.it",
            "hotmail.es",
            "live.co.uk",
            "live.fr",
            "live.de",
            "outlook.de",
            "outlook.fr",
            "outlook.es",
            "outlook.it",
        ),
        help_text="Outlook.com accepts only sign-in with Microsoft; passwords and app passwords no longer work "
        "for IMAP.",
        help_url="https://support.microsoft.com/office/pop-imap-and-smtp-settings-for-outlook-com-d088b986-291d-42b8-9564-9c414e2aa040",
        files_sent_mail=True,
    ),
    ProviderPreset(
        key="icloud",
        name="iCloud Mail",
        imap_host="imap.mail.me.com",
        smtp_host="smtp.mail.me.com",
        smtp_port=587,
        smtp_security=STARTTLS,
        auth_kind=APP_PASSWORD,
        attachment_limit_mb=20,
        domains=("icloud.com", "me.com", "mac.com"),
        help_text="iCloud requires an app-specific password: appleid.apple.com > Sign-In and Security > "
        "App-Specific Passwords.",
        help_url="https://appleid.apple.com/account/manage",
        files_sent_mail=True,
    ),
    ProviderPreset(
        key="aol",
        name="AOL Mail",
        imap_host="imap.aol.com",
        smtp_host="smtp.aol.com",
        auth_kind=APP_PASSWORD,
        attachment_limit_mb=25,
        domains=("aol.com", "aim.com", "aol.co.uk", "aol.fr", "aol.de", "love.com", "games.com", "wow.com"),
        help_text="AOL requires an app password: Account Security > Generate app password.",
        help_url="https://login.aol.com/account/security",
    ),
    ProviderPreset(
        key="fastmail",
        name="FastMail",
        imap_host="imap.fastmail.com",
        smtp_host="smtp.fastmail.com",
        auth_kind=APP_PASSWORD,
        attachment_limit_mb=50,
        domains=("fastmail.com", "fastmail.fm", "fastmail.to", "fastmail.net", "fastmail.org", "sent.com"),
        mx_patterns=("messagingengine.com", "fastmail.com"),
        help_text="FastMail requires an app password: Settings > Privacy & Security > Integrations > "
        "New app password (access: IMAP and SMTP).",
        help_url="https://app.fastmail.com/settings/security/integrations",
    ),
    ProviderPreset(
        key="gandi",
        name="GandiMail",
        imap_host="mail.gandi.net",
        smtp_host="mail.gandi.net",
        attachment_limit_mb=50,
        mx_patterns=("mail.gandi.net", "gandi.net"),
    ),
    ProviderPreset(
        key="gmx",
        name="GMX",
        imap_host="imap.gmx.net",
        smtp_host="mail.gmx.net",
        smtp_port=587,
        smtp_security=STARTTLS,
        attachment_limit_mb=50,
        domains=("gmx.de", "gmx.net", "gmx.at", "gmx.ch", "gmx.eu", "gmx.org", "gmx.info", "gmx.biz"),
        mx_patterns=("gmx.net",),
        help_text="Turn on 'POP3/IMAP access' in the GMX settings first. " + _APP_PASSWORD_2FA,
        help_url="https://support.gmx.com/pop-imap/toggle.html",
    ),
    ProviderPreset(
        key="gmx_com",
        name="GMX (gmx.com)",
        imap_host="imap.gmx.com",
        smtp_host="mail.gmx.com",
        smtp_port=587,
        smtp_security=STARTTLS,
        attachment_limit_mb=50,
        domains=("gmx.com", "gmx.us", "gmx.co.uk", "gmx.fr", "gmx.es"),
        mx_patterns=("gmx.com",),
        help_text="Turn on 'POP3/IMAP access' in the GMX settings first. " + _APP_PASSWORD_2FA,
        help_url="https://support.gmx.com/pop-imap/toggle.html",
    ),
    ProviderPreset(
        key="mailru",
        name="Mail.ru",
        imap_host="imap.mail.ru",
        smtp_host="smtp.mail.ru",
        auth_kind=APP_PASSWORD,
        attachment_limit_mb=25,
        domains=("mail.ru", "inbox.ru", "list.ru", "bk.ru", "internet.ru", "mail.ua"),
        mx_patterns=("mail.ru",),
        help_text="Mail.ru requires a 'password for external applications': Settings > Security > "
        "Passwords for external applications.",
        help_url="https://account.mail.ru/user/2-step-auth/passwords/",
    ),
    ProviderPreset(
        key="yandex",
        name="Yandex.Mail",
        imap_host="imap.yandex.com",
        smtp_host="smtp.yandex.com",
        auth_kind=APP_PASSWORD,
        attachment_limit_mb=25,
        domains=("yandex.ru", "yandex.com", "ya.ru", "yandex.by", "yandex.kz", "yandex.ua", "yandex.com.tr"),
        mx_patterns=("mx.yandex.net", "yandex.net", "yandex.ru"),
        help_text="Yandex requires an app password for mail programs: Yandex ID > Security > App passwords > "
        "Mail. Also allow IMAP in Mail settings > Email clients.",
        help_url="https://id.yandex.com/security/app-passwords",
    ),
    ProviderPreset(
        key="godaddy",
        name="GoDaddy Workspace Email",
        imap_host="imap.secureserver.net",
        smtp_host="smtpout.secureserver.net",
        attachment_limit_mb=20,
        mx_patterns=("secureserver.net",),
        help_text="If your GoDaddy email is 'Microsoft 365 from GoDaddy', choose Office 365 instead.",
    ),
    ProviderPreset(
        key="hover",
        name="Hover",
        imap_host="mail.hover.com",
        smtp_host="mail.hover.com",
        attachment_limit_mb=25,
        mx_patterns=("hover.com",),
    ),
    ProviderPreset(
        key="namecheap",
        name="Namecheap Private Email",
        imap_host="mail.privateemail.com",
        smtp_host="mail.privateemail.com",
        attachment_limit_mb=20,
        mx_patterns=("privateemail.com",),
    ),
    ProviderPreset(
        key="bluehost",
        name="Bluehost",
        imap_host="mail.{domain}",
        smtp_host="mail.{domain}",
        attachment_limit_mb=25,
        mx_patterns=("bluehost.com",),
        needs_servers=True,
        help_text="Bluehost serves mail as mail.<your domain>; check the names in your Bluehost control panel.",
    ),
    ProviderPreset(
        key="soverin",
        name="Soverin",
        imap_host="imap.soverin.net",
        smtp_host="smtp.soverin.net",
        attachment_limit_mb=25,
        domains=("soverin.net",),
        mx_patterns=("soverin.net",),
    ),
    ProviderPreset(
        key="zimbra",
        name="Zimbra",
        imap_host="mail.{domain}",
        smtp_host="mail.{domain}",
        smtp_port=587,
        smtp_security=STARTTLS,
        attachment_limit_mb=10,
        needs_servers=True,
        help_text="Zimbra is run by your organisation or host: ask them for the IMAP and SMTP server names.",
    ),
    ProviderPreset(
        key="123reg",
        name="123-reg",
        imap_host="imap.123-reg.co.uk",
        smtp_host="smtp.123-reg.co.uk",
        attachment_limit_mb=20,
        mx_patterns=("123-reg.co.uk",),
    ),
    ProviderPreset(
        key="netease126",
        name="126",
        imap_host="imap.126.com",
        smtp_host="smtp.126.com",
        auth_kind=APP_PASSWORD,
        attachment_limit_mb=50,
        domains=("126.com",),
        help_text="126 requires a client authorization code: Settings > POP3/SMTP/IMAP > turn on IMAP/SMTP and "
        "create an authorization code. Use it as the password.",
        help_url="https://mail.126.com",
    ),
    ProviderPreset(
        key="qq",
        name="QQ Mail",
        imap_host="imap.qq.com",
        smtp_host="smtp.qq.com",
        auth_kind=APP_PASSWORD,
        attachment_limit_mb=50,
        domains=("qq.com", "vip.qq.com", "foxmail.com"),
        help_text="QQ Mail requires an authorization code: Settings > Account > turn on the IMAP/SMTP service "
        "and generate an authorization code. Use it as the password.",
        help_url="https://mail.qq.com",
    ),
    ProviderPreset(
        key="aliyun",
        name="Aliyun Mail",
        imap_host="imap.aliyun.com",
        smtp_host="smtp.aliyun.com",
        attachment_limit_mb=50,
        domains=("aliyun.com",),
        help_text="Turn on IMAP/SMTP in the Aliyun Mail settings first.",
    ),
    ProviderPreset(
        key="aliyun_enterprise",
        name="Alibaba Mail (enterprise)",
        imap_host="imap.qiye.aliyun.com",
        smtp_host="smtp.qiye.aliyun.com",
        attachment_limit_mb=50,
        mx_patterns=("mxhichina.com", "qiye.aliyun.com"),
    ),
    ProviderPreset(
        key="netease163",
        name="Netease 163",
        imap_host="imap.163.com",
        smtp_host="smtp.163.com",
        auth_kind=APP_PASSWORD,
        attachment_limit_mb=50,
        domains=("163.com", "vip.163.com"),
        mx_patterns=("163.com", "netease.com"),
        help_text="163 requires a client authorization code: Settings > POP3/SMTP/IMAP > turn on IMAP/SMTP and "
        "create an authorization code. Use it as the password.",
        help_url="https://mail.163.com",
    ),
    ProviderPreset(
        key="yeah",
        name="Yeah.net",
        imap_host="imap.yeah.net",
        smtp_host="smtp.yeah.net",
        auth_kind=APP_PASSWORD,
        attachment_limit_mb=50,
        domains=("yeah.net",),
        help_text="Yeah.net requires a client authorization code: Settings > POP3/SMTP/IMAP. Use it as the password.",
        help_url="https://mail.yeah.net",
    ),
    ProviderPreset(
        key="china139",
        name="139.com",
        imap_host="imap.139.com",
        smtp_host="smtp.139.com",
        attachment_limit_mb=50,
        domains=("139.com",),
        help_text="Turn on the IMAP/SMTP service in the 139 Mail settings; if you created a client authorization "
        "code there, use it as the password.",
    ),
    ProviderPreset(
        key="zoho",
        name="Zoho Mail",
        imap_host="imap.zoho.com",
        smtp_host="smtp.zoho.com",
        attachment_limit_mb=20,
        domains=("zoho.com", "zohomail.com"),
        mx_patterns=("zoho.com", "zohomail.com"),
        help_text="Turn on IMAP access in Zoho Mail settings. " + _APP_PASSWORD_2FA,
        help_url="https://accounts.zoho.com/home#security/app_password",
        files_sent_mail=True,
    ),
    ProviderPreset(
        key="zoho_eu",
        name="Zoho Mail (EU)",
        imap_host="imap.zoho.eu",
        smtp_host="smtp.zoho.eu",
        attachment_limit_mb=20,
        domains=("zoho.eu", "zohomail.eu"),
        mx_patterns=("zoho.eu", "zohomail.eu"),
        help_text="Turn on IMAP access in Zoho Mail settings. " + _APP_PASSWORD_2FA,
        help_url="https://accounts.zoho.eu/home#security/app_password",
        files_sent_mail=True,
    ),
    ProviderPreset(
        key="custom",
        name="Custom IMAP over SSL/TLS",
        imap_host="",
        smtp_host="",
        attachment_limit_mb=25,
        needs_servers=True,
        help_text="Enter the IMAP and SMTP servers from your provider's instructions.",
    ),
)

PRESETS_BY_KEY: dict[str, ProviderPreset] = {preset.key: preset for preset in PRESETS}
_BY_DOMAIN: dict[str, ProviderPreset] = {domain: preset for preset in PRESETS for domain in preset.domains}
CUSTOM = PRESETS_BY_KEY["custom"]


def get_preset(key: str) -> ProviderPreset | None:
    return PRESETS_BY_KEY.get(key)


def choices() -> list[tuple[str, str]]:
    """For a <select>: every preset, custom last."""
    return [(p.key, p.name) for p in PRESETS if p.key != "custom"] + [("custom", CUSTOM.name)]


@dataclass(frozen=True)
class Detection:
    preset: ProviderPreset | None  # None: ask the user for the servers
    via: str  # "domain", "mx" or "" (not found)
    mx_hosts: tuple[str, ...] = ()


MxLookup = Callable[[str], list[str]]


# Special-use top-level domains (RFC 2606, RFC 6761) that have no mail servers in the public DNS.
RESERVED_TLDS = frozenset({"test", "example", "invalid", "localhost", "local"})


def lookup_mx(domain: str, *, timeout: float = 3.0) -> list[str]:
    """MX host names of a domain, best preference first; [] on any DNS failure (offline included)."""
    import dns.exception
    import dns.resolver

    if domain.rsplit(".", 1)[-1] in RESERVED_TLDS:
        return []  # never delegated: asking DNS would only wait for a timeout
    try:
        resolver = dns.resolver.Resolver()
        resolver.lifetime = timeout
        resolver.timeout = timeout
        answer = resolver.resolve(domain, "MX")
    except (dns.exception.DNSException, OSError, ValueError) as exc:
        logger.info("MX lookup for %s failed: %s", domain, type(exc).__name__)
        return []
    records = sorted(answer, key=lambda record: record.preference)
    return [str(record.exchange).rstrip(".").lower() for record in records]


def _domain_of(address: str) -> str:
    _local, _, domain = address.strip().rpartition("@")
    return domain.strip().lower().rstrip(".")


def preset_for_mx(mx_hosts: list[str] | tuple[str, ...]) -> ProviderPreset | None:
    for host in mx_hosts:
        host = host.lower().rstrip(".")
        for preset in PRESETS:
            if any(host == pattern or host.endswith("." + pattern) for pattern in preset.mx_patterns):
                return preset
    return None


def detect_provider(address: str, *, mx_lookup: MxLookup | None = None) -> Detection:
    """The preset for an address: by domain, else by MX records, else none (ask for the servers)."""
    domain = _domain_of(address)
    if not domain or "." not in domain:
        return Detection(preset=None, via="")
    preset = _BY_DOMAIN.get(domain)
    if preset is not None:
        return Detection(preset=preset.for_domain(domain), via="domain")
    mx_hosts = tuple((mx_lookup or lookup_mx)(domain))
    preset = preset_for_mx(mx_hosts)
    if preset is not None:
        return Detection(preset=preset.for_domain(domain), via="mx", mx_hosts=mx_hosts)
    return Detection(preset=None, via="", mx_hosts=mx_hosts)


def connection_caps() -> dict[str, int]:
    """IMAP host -> the cap of simultaneous connections per mailbox, for mailsync.connection.limits."""
    return {preset.imap_host: preset.max_connections for preset in PRESETS if preset.max_connections}
