"""OAuth2 for Gmail / Google Workspace and Microsoft 365 / Outlook.com (A3): XOAUTH2 for IMAP and SMTP.

Client ids and secrets come from the environment (read at call time, so nothing else to configure):

    GOOGLE_OAUTH_CLIENT_ID / GOOGLE_OAUTH_CLIENT_SECRET        (Google Cloud console, "Web application",
                                                               Gmail API scope https://mail.google.com/)
    MICROSOFT_OAUTH_CLIENT_ID / MICROSOFT_OAUTH_CLIENT_SECRET  (Entra ID app registration, delegated
                                                               IMAP.AccessAsUser.All + SMTP.Send)

The redirect URI to register is https://<your host>/mail/oauth/callback/.
When a provider is not configured, the UI says so and offers the app-password path where the provider
allows it. `post_token_request` is the only function that talks to the network (the one thing tests mock).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import secrets
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

from . import errors


@dataclass(frozen=True)
class OAuthProvider:
    key: str
    name: str
    authorize_url: str
    token_url: str
    scopes: tuple[str, ...]
    env_prefix: str
    extra_authorize_params: dict[str, str] = field(default_factory=dict)

    def credentials(self) -> tuple[str, str] | None:
        client_id = os.environ.get(f"{self.env_prefix}_OAUTH_CLIENT_ID", "").strip()
        client_secret = os.environ.get(f"{self.env_prefix}_OAUTH_CLIENT_SECRET", "").strip()
        return (client_id, client_secret) if client_id and client_secret else None

    @property
    def is_configured(self) -> bool:
        return self.credentials() is not None


PROVIDERS: dict[str, OAuthProvider] = {
    "google": OAuthProvider(
        key="google",
        name="Google",
        authorize_url="https://accounts.google.com/o/oauth2/v2/auth",
        token_url="https://oauth2.googleapis.com/token",
        scopes=("https://mail.google.com/", "openid", "email"),
        env_prefix="GOOGLE",
        extra_authorize_params={"access_type": "offline", "prompt": "consent"},
    ),
    "microsoft": OAuthProvider(
        key="microsoft",
        name="Microsoft",
        authorize_url="https://login.microsoftonline.com/common/oauth2/v2.0/authorize",
        token_url="https://login.microsoftonline.com/common/oauth2/v2.0/token",
        scopes=(
            "offline_access",
            "openid",
            "email",
            "https://outlook.office.com/IMAP.AccessAsUser.All",
            "https://outlook.office.com/SMTP.Send",
        ),
        env_prefix="MICROSOFT",
        extra_authorize_params={"prompt": "select_account"},
    ),
}


def get_provider(key: str) -> OAuthProvider:
    try:
        return PROVIDERS[key]
    except KeyError:
        raise errors.OAuthNotConfigured(detail=f"unknown OAuth provider {key!r}", protocol="oauth") from None


def _configured(key: str) -> tuple[OAuthProvider, str, str]:
    provider = get_provider(key)
    credentials = provider.credentials()
    if credentials is None:
        raise errors.OAuthNotConfigured(
            f"Sign-in with {provider.name} is not configured on this CRM.",
            detail=f"{provider.env_prefix}_OAUTH_CLIENT_ID / _SECRET are not set",
            protocol="oauth",
        )
    return provider, credentials[0], credentials[1]


@dataclass
class OAuthTokens:
    provider: str
    access_token: str = field(repr=False)
    refresh_token: str = field(default="", repr=False)
    expires_at: dt.datetime | None = None
    email: str = ""  # from the id_token, when the provider sent one

    def expires_soon(self, *, leeway_seconds: int = 120) -> bool:
        if self.expires_at is None:
            return False
        return self.expires_at <= dt.datetime.now(dt.UTC) + dt.timedelta(seconds=leeway_seconds)

    def to_secret(self) -> str:
        """The JSON stored (encrypted) as the account's secret."""
        return json.dumps(
            {
                "provider": self.provider,
                "access_token": self.access_token,
                "refresh_token": self.refresh_token,
                "expires_at": self.expires_at.isoformat() if self.expires_at else None,
                "email": self.email,
            }
        )

    @classmethod
    def from_secret(cls, secret: str) -> OAuthTokens:
        try:
            data = json.loads(secret)
            expires_at = dt.datetime.fromisoformat(data["expires_at"]) if data.get("expires_at") else None
            return cls(
                provider=data["provider"],
                access_token=data["access_token"],
                refresh_token=data.get("refresh_token", ""),
                expires_at=expires_at,
                email=data.get("email", ""),
            )
        except (ValueError, KeyError, TypeError):
            raise errors.OAuthFailed(detail="stored OAuth tokens are unreadable", protocol="oauth") from None


def new_code_verifier() -> str:
    """A PKCE code verifier (RFC 7636 4.1): 43 characters of [A-Za-z0-9-_] from 32 random bytes."""
    return secrets.token_urlsafe(32)


def code_challenge(verifier: str) -> str:
    """The S256 code challenge of a verifier (RFC 7636 4.2): BASE64URL(SHA256(verifier)) without padding."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def authorization_url(key: str, *, redirect_uri: str, state: str, code_verifier: str, login_hint: str = "") -> str:
    """The provider's consent page. PKCE (S256): a code stolen on its way back (a hostile app or proxy on
    the redirect) is useless without the verifier, which stays in the user's session."""
    provider, client_id, _secret = _configured(key)
    params = {
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "response_type": "code",
        "scope": " ".join(provider.scopes),
        "state": state,
        "code_challenge": code_challenge(code_verifier),
        "code_challenge_method": "S256",
        **provider.extra_authorize_params,
    }
    if login_hint:
        params["login_hint"] = login_hint
    return f"{provider.authorize_url}?{urllib.parse.urlencode(params)}"


def exchange_code(key: str, *, code: str, redirect_uri: str, code_verifier: str) -> OAuthTokens:
    provider, client_id, client_secret = _configured(key)
    response = post_token_request(
        provider.token_url,
        {
            "grant_type": "authorization_code",
            "code": code,
            "code_verifier": code_verifier,
            "redirect_uri": redirect_uri,
            "client_id": client_id,
            "client_secret": client_secret,
            "scope": " ".join(provider.scopes),
        },
    )
    return _tokens_from_response(provider, response, previous_refresh_token="")


def refresh_access_token(key: str, *, refresh_token: str) -> OAuthTokens:
    provider, client_id, client_secret = _configured(key)
    if not refresh_token:
        raise errors.OAuthFailed(detail="no refresh token stored", protocol="oauth")
    response = post_token_request(
        provider.token_url,
        {
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": client_id,
            "client_secret": client_secret,
            "scope": " ".join(provider.scopes),
        },
    )
    return _tokens_from_response(provider, response, previous_refresh_token=refresh_token)


def _tokens_from_response(provider: OAuthProvider, response: dict, *, previous_refresh_token: str) -> OAuthTokens:
    if "error" in response or not response.get("access_token"):
        error_code = str(response.get("error", "no access_token"))[:100]
        description = str(response.get("error_description", ""))[:300]
        raise errors.OAuthFailed(detail=f"{provider.name}: {error_code} {description}".strip(), protocol="oauth")
    expires_in = int(response.get("expires_in") or 3600)
    return OAuthTokens(
        provider=provider.key,
        access_token=response["access_token"],
        # Google sends a refresh token only on the first consent; keep the one we have.
        refresh_token=response.get("refresh_token") or previous_refresh_token,
        expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=expires_in),
        email=_email_from_id_token(response.get("id_token", "")),
    )


def _email_from_id_token(id_token: str) -> str:
    """The email claim of an OpenID id_token. Its signature is not checked: it came straight from the
    provider's token endpoint over verified TLS (OpenID Connect Core 3.1.3.7, item 6)."""
    try:
        payload = id_token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return ""
    email = claims.get("email") or claims.get("preferred_username") or ""
    return str(email).strip().lower() if "@" in str(email) else ""


def post_token_request(url: str, form: dict[str, str], *, timeout: float = 15.0) -> dict:
    """POST a form to a token endpoint and return its JSON (error bodies included). The only network call."""
    request = urllib.request.Request(  # noqa: S310 - fixed https URLs from PROVIDERS
        url,
        data=urllib.parse.urlencode(form).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return json.loads(response.read().decode())
    except urllib.error.HTTPError as exc:
        try:
            return json.loads(exc.read().decode())
        except ValueError:
            return {"error": f"http_{exc.code}"}
    except (TimeoutError, urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, TimeoutError):
            raise errors.ConnectionTimeout(detail=urllib.parse.urlsplit(url).netloc, protocol="oauth") from None
        raise errors.Unreachable(
            "The sign-in service of your provider could not be reached.",
            detail=f"{urllib.parse.urlsplit(url).netloc}: {type(reason).__name__}",
            protocol="oauth",
        ) from None


def xoauth2_string(user: str, access_token: str) -> str:
    """The XOAUTH2 SASL initial response before base64 (notes/imap-sync.md)."""
    return f"user={user}\x01auth=Bearer {access_token}\x01\x01"


def xoauth2_base64(user: str, access_token: str) -> str:
    return base64.b64encode(xoauth2_string(user, access_token).encode()).decode()
