"""Smart BCC through django-anymail's inbound webhooks, one real payload shape per provider.

The payloads follow each provider's documented format (Mailgun routes forward(), raw-MIME and parsed;
Postmark's inbound JSON; SendGrid's Inbound Parse multipart form, raw and parsed; Amazon SES receipt
notifications delivered by SNS). Each provider's proof is checked for real: Mailgun's HMAC, SendGrid's
ECDSA signature, basic auth for Postmark and SES. The provider itself is the only thing not here.
"""

import base64
import hashlib
import hmac
import json
import time
import uuid
from email.utils import formatdate

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client, TestCase
from django.test.client import BOUNDARY, MULTIPART_CONTENT, encode_multipart
from django.urls import reverse

from mailsync.models import EmailMessage, SmartBccDelivery
from tests.smart_bcc_support import CUSTOMER, sent_copy

pytestmark = pytest.mark.django_db

MAILGUN_KEY = "key-5f0d1c8e2e0b4f6a9c3d7e1a2b4c6d8e"
BASIC_AUTH = "smartbcc:s3cret-webhook-pass"
Reason = SmartBccDelivery.Reason


@pytest.fixture
def webhook_settings(smart_bcc_settings):
    smart_bcc_settings.ANYMAIL = {"WEBHOOK_SECRET": [BASIC_AUTH], "MAILGUN_WEBHOOK_SIGNING_KEY": MAILGUN_KEY}
    return smart_bcc_settings


def basic_auth(credentials: str = BASIC_AUTH) -> dict:
    return {"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(credentials.encode()).decode()}


def post(path: str, **kwargs):
    with TestCase.captureOnCommitCallbacks(execute=True):
        return Client().post(path, **kwargs)


def filed() -> list[EmailMessage]:
    return list(EmailMessage.objects.order_by("pk"))


# --- Mailgun --------------------------------------------------------------------------------------------


def mailgun_signature(key: str = MAILGUN_KEY) -> dict:
    timestamp, token = str(int(time.time())), uuid.uuid4().hex + uuid.uuid4().hex[:18]
    signature = hmac.new(key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
    return {"timestamp": timestamp, "token": token, "signature": signature}


MAILGUN_TRACE = (
    "X-Mailgun-Incoming: Yes\r\nX-Mailgun-Spf: Pass\r\nX-Mailgun-Dkim-Check-Result: Pass\r\n"
    "X-Mailgun-Sflag: No\r\nX-Mailgun-Sscore: 0.0\r\nX-Envelope-From: <alice@company.test>\r\n"
    "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=company.test; s=s1; h=from:to:subject;"
    " bh=abc=; b=def=\r\n"
)


def test_mailgun_raw_mime_route_files_the_message(alice, alice_bcc, webhook_settings):
    raw = sent_copy(message_id="<mg-1@company.test>")
    form = {
        "recipient": alice_bcc,
        "sender": "alice@company.test",
        "from": "Alice Owner <alice@company.test>",
        "subject": "Offer for 2027",
        "body-mime": MAILGUN_TRACE + raw.decode(),
        **mailgun_signature(),
    }
    # With ANYMAIL_WEBHOOK_SECRET set, every provider's URL carries it; Mailgun's signature is checked too.
    response = post(reverse("mailsync:smart_bcc_mailgun_mime"), data=form, **basic_auth())
    assert response.status_code == 200
    (message,) = filed()
    assert message.message_id == "mg-1@company.test"
    assert [a.filename for a in message.attachments.all()] == ["offer.pdf"]
    delivery = SmartBccDelivery.objects.get(message=message)
    assert (delivery.channel, delivery.spf, delivery.dkim) == ("mailgun", "pass", "pass")


def test_mailgun_parsed_route_with_an_attachment(alice, alice_bcc, webhook_settings):
    headers = [
        ["X-Mailgun-Spf", "Pass"],
        ["From", "Alice Owner <alice@company.test>"],
        ["To", f"Carol Customer <{CUSTOMER}>"],
        ["Subject", "Offer for 2027"],
        ["Date", formatdate()],
        ["Message-Id", "<mg-2@company.test>"],
        ["Mime-Version", "1.0"],
    ]
    form = {
        "recipient": alice_bcc,
        "sender": "alice@company.test",
        "from": "Alice Owner <alice@company.test>",
        "subject": "Offer for 2027",
        "body-plain": "Hello Carol,\n\nthe offer is attached.\n",
        "stripped-text": "Hello Carol,",
        "body-html": "<p>Hello Carol,</p><p>the offer is attached.</p>",
        "message-headers": json.dumps(headers),
        "attachment-count": "1",
        "attachment-1": SimpleUploadedFile("offer.pdf", b"%PDF-1.4 offer\n", content_type="application/pdf"),
        "content-id-map": "{}",
        **mailgun_signature(),
    }
    webhook_settings.ANYMAIL = {"MAILGUN_WEBHOOK_SIGNING_KEY": MAILGUN_KEY}  # the signature alone suffices
    assert post(reverse("mailsync:smart_bcc_mailgun"), data=form).status_code == 200
    (message,) = filed()
    assert message.message_id == "mg-2@company.test"
    assert message.attachments.get().file.read() == b"%PDF-1.4 offer\n"


def test_mailgun_with_a_wrong_signature_files_nothing(alice, alice_bcc, webhook_settings):
    form = {"recipient": alice_bcc, "body-mime": sent_copy().decode(), **mailgun_signature("key-someone-else")}
    assert post(reverse("mailsync:smart_bcc_mailgun_mime"), data=form, **basic_auth()).status_code == 400
    assert not filed() and not SmartBccDelivery.objects.exists()


def test_an_unconfigured_provider_is_refused(alice, alice_bcc, smart_bcc_settings):
    smart_bcc_settings.ANYMAIL = {}
    form = {"recipient": alice_bcc, "body-mime": sent_copy().decode(), **mailgun_signature()}
    assert post(reverse("mailsync:smart_bcc_mailgun_mime"), data=form).status_code == 403
    payload = postmark_payload(alice_bcc, sent_copy())
    assert (
        post(reverse("mailsync:smart_bcc_postmark"), data=payload, content_type="application/json").status_code == 403
    )
    assert not filed()


# --- Postmark -------------------------------------------------------------------------------------------


def postmark_payload(
    recipient: str, raw: bytes, *, spf: str = "Pass", spam_tests: str = "DKIM_SIGNED,DKIM_VALID,DKIM_VALID_AU,SPF_PASS"
) -> dict:
    return {
        "FromName": "Alice Owner",
        "MessageStream": "inbound",
        "From": "alice@company.test",
        "FromFull": {"Email": "alice@company.test", "Name": "Alice Owner", "MailboxHash": ""},
        "To": f'"Carol Customer" <{CUSTOMER}>',
        "ToFull": [{"Email": CUSTOMER, "Name": "Carol Customer", "MailboxHash": ""}],
        "Cc": "",
        "CcFull": [],
        "Bcc": "",
        "BccFull": [],
        "OriginalRecipient": recipient,
        "Subject": "Offer for 2027",
        "MessageID": str(uuid.uuid4()),
        "ReplyTo": "",
        "MailboxHash": "",
        "Date": formatdate(),
        "TextBody": "Hello Carol,\n\nthe offer is attached.\n",
        "HtmlBody": "",
        "StrippedTextReply": "",
        "Tag": "",
        "Headers": [
            {"Name": "Return-Path", "Value": "<alice@company.test>"},
            {
                "Name": "Received-SPF",
                "Value": (
                    f"{spf} (sender SPF authorized) identity=mailfrom; client-ip=192.0.2.10; "
                    f"helo=mail.company.test; envelope-from=alice@company.test; receiver={recipient}"
                ),
            },
            {
                "Name": "X-Spam-Checker-Version",
                "Value": "SpamAssassin 3.4.0 (2014-02-07) on p-pm-inboundg01a-aws-useast1a",
            },
            {"Name": "X-Spam-Status", "Value": "No"},
            {"Name": "X-Spam-Score", "Value": "-0.1"},
            {"Name": "X-Spam-Tests", "Value": spam_tests},
            {"Name": "MIME-Version", "Value": "1.0"},
            {"Name": "Message-ID", "Value": "<pm-1@company.test>"},
        ],
        "Attachments": [
            {
                "Name": "offer.pdf",
                "Content": base64.b64encode(b"%PDF-1.4 offer\n").decode(),
                "ContentType": "application/pdf",
                "ContentLength": 15,
                "ContentID": "",
            }
        ],
        "RawEmail": raw.decode(),
    }


def test_postmark_with_basic_auth_files_the_raw_email(alice, alice_bcc, webhook_settings):
    raw = sent_copy(message_id="<pm-1@company.test>")
    payload = postmark_payload(alice_bcc, raw)
    response = post(
        reverse("mailsync:smart_bcc_postmark"), data=payload, content_type="application/json", **basic_auth()
    )
    assert response.status_code == 200
    (message,) = filed()
    assert message.message_id == "pm-1@company.test" and message.has_attachments
    assert SmartBccDelivery.objects.get(message=message).dkim == "pass"


def test_postmark_without_raw_email_is_rebuilt_from_its_fields(alice, alice_bcc, webhook_settings):
    payload = postmark_payload(alice_bcc, b"")
    del payload["RawEmail"]
    assert (
        post(
            reverse("mailsync:smart_bcc_postmark"), data=payload, content_type="application/json", **basic_auth()
        ).status_code
        == 200
    )
    (message,) = filed()
    assert message.message_id == "pm-1@company.test"
    assert message.attachments.get().filename == "offer.pdf"


def test_postmark_with_wrong_basic_auth_files_nothing(alice, alice_bcc, webhook_settings):
    payload = postmark_payload(alice_bcc, sent_copy())
    response = post(
        reverse("mailsync:smart_bcc_postmark"),
        data=payload,
        content_type="application/json",
        **basic_auth("smartbcc:guess"),
    )
    assert response.status_code == 400
    assert not filed()


def test_postmark_forged_from_failing_spf_and_dkim_is_listed_not_filed(alice, alice_bcc, webhook_settings):
    payload = postmark_payload(alice_bcc, sent_copy(), spf="Fail", spam_tests="SPF_FAIL,MISSING_MID")
    assert (
        post(
            reverse("mailsync:smart_bcc_postmark"), data=payload, content_type="application/json", **basic_auth()
        ).status_code
        == 200
    )
    assert not filed()
    delivery = SmartBccDelivery.objects.get(user=alice)
    assert delivery.reason == Reason.FAILED_AUTHENTICATION and (delivery.spf, delivery.dkim) == ("fail", "fail")


# --- SendGrid -------------------------------------------------------------------------------------------


@pytest.fixture
def sendgrid_key(webhook_settings):
    private_key = ec.generate_private_key(ec.SECP256R1())
    public_der = private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    webhook_settings.ANYMAIL = {  # the signature alone (no basic auth)
        "SENDGRID_INBOUND_WEBHOOK_VERIFICATION_KEY": base64.b64encode(public_der).decode(),
    }
    return private_key


def sendgrid_post(form: dict, private_key, *, tamper: bool = False):
    body = encode_multipart(BOUNDARY, form)
    timestamp = str(int(time.time()))
    signature = base64.b64encode(private_key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))).decode()
    if tamper:
        body = body.replace(b"Offer for 2027", b"Offer for 2028")
    with TestCase.captureOnCommitCallbacks(execute=True):
        return Client().generic(
            "POST",
            reverse("mailsync:smart_bcc_sendgrid"),
            body,
            content_type=MULTIPART_CONTENT,
            HTTP_X_TWILIO_EMAIL_EVENT_WEBHOOK_SIGNATURE=signature,
            HTTP_X_TWILIO_EMAIL_EVENT_WEBHOOK_TIMESTAMP=timestamp,
        )


def sendgrid_form(recipients: list[str], *, raw: bytes | None = None, dkim: str = "{@company.test : pass}") -> dict:
    form = {
        "dkim": dkim,
        "SPF": "pass",
        "sender_ip": "192.0.2.10",
        "envelope": json.dumps({"to": recipients, "from": "alice@company.test"}),
        "subject": "Offer for 2027",
        "from": "Alice Owner <alice@company.test>",
        "to": f"Carol Customer <{CUSTOMER}>",
        "charsets": json.dumps({"to": "UTF-8", "subject": "UTF-8", "from": "UTF-8", "text": "utf-8"}),
        "spam_score": "0.1",
        "spam_report": "Spam detection software has NOT identified this incoming email as spam.",
    }
    if raw is not None:  # "POST the raw, full MIME message"
        form["email"] = raw.decode()
    else:
        form.update(
            {
                "headers": (
                    "From: Alice Owner <alice@company.test>\nTo: Carol Customer <carol@customer.example>\n"
                    f"Subject: Offer for 2027\nDate: {formatdate()}\nMessage-ID: <sg-2@company.test>\n"
                    "MIME-Version: 1.0\n"
                ),
                "text": "Hello Carol,\n\nthe offer is attached.\n",
                "attachments": "1",
                "attachment-info": json.dumps(
                    {"attachment1": {"filename": "offer.pdf", "name": "offer.pdf", "type": "application/pdf"}}
                ),
                "attachment1": SimpleUploadedFile("offer.pdf", b"%PDF-1.4 offer\n", content_type="application/pdf"),
            }
        )
    return form


def test_sendgrid_signed_raw_post_files_for_every_smart_bcc_recipient(alice, bob, alice_bcc, sendgrid_key):
    from mailsync.inbound import selectors, services

    bob_bcc = selectors.full_address(services.ensure_address(user=bob))
    raw = sent_copy(message_id="<sg-1@company.test>")
    response = sendgrid_post(sendgrid_form([alice_bcc, bob_bcc], raw=raw), sendgrid_key)
    assert response.status_code == 200
    (message,) = filed()  # alice sent it: filed for her; bob is not the sender, listed under his Not filed
    assert message.thread.owner == alice
    assert SmartBccDelivery.objects.get(user=bob).reason == Reason.UNKNOWN_SENDER


def test_sendgrid_parsed_post_with_an_attachment(alice, alice_bcc, sendgrid_key):
    assert sendgrid_post(sendgrid_form([alice_bcc]), sendgrid_key).status_code == 200
    (message,) = filed()
    assert message.message_id == "sg-2@company.test"
    assert message.attachments.get().file.read() == b"%PDF-1.4 offer\n"


def test_sendgrid_with_a_bad_signature_files_nothing(alice, alice_bcc, sendgrid_key):
    response = sendgrid_post(sendgrid_form([alice_bcc], raw=sent_copy()), sendgrid_key, tamper=True)
    assert response.status_code == 400
    assert not filed()


# --- Amazon SES (receipt rule -> SNS -> HTTPS) -------------------------------------------------------


def ses_notification(recipient: str, raw: bytes, *, spf: str = "PASS", dkim: str = "PASS") -> dict:
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    message = {
        "notificationType": "Received",
        "mail": {
            "timestamp": now,
            "source": "alice@company.test",
            "messageId": "o3vrnil0e2ic28trm7dfhrc2v0clambda4nbp0g1",
            "destination": [recipient],
            "headersTruncated": False,
            "headers": [{"name": "From", "value": "Alice Owner <alice@company.test>"}],
            "commonHeaders": {
                "from": ["Alice Owner <alice@company.test>"],
                "to": [CUSTOMER],
                "subject": "Offer for 2027",
            },
        },
        "receipt": {
            "timestamp": now,
            "processingTimeMillis": 222,
            "recipients": [recipient],
            "spamVerdict": {"status": "PASS"},
            "virusVerdict": {"status": "PASS"},
            "spfVerdict": {"status": spf},
            "dkimVerdict": {"status": dkim},
            "dmarcVerdict": {"status": "PASS" if "PASS" in (spf, dkim) else "FAIL"},
            "action": {"type": "SNS", "topicArn": "arn:aws:sns:us-east-1:123456789012:smart-bcc", "encoding": "BASE64"},
        },
        "content": base64.b64encode(raw).decode(),
    }
    message_id = str(uuid.uuid4())
    return {
        "Type": "Notification",
        "MessageId": message_id,
        "TopicArn": "arn:aws:sns:us-east-1:123456789012:smart-bcc",
        "Subject": "Amazon SES Email Receipt Notification",
        "Message": json.dumps(message),
        "Timestamp": now,
        "SignatureVersion": "1",
        "Signature": "EXAMPLEw6JRN...",
        "SigningCertURL": "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-EXAMPLE.pem",
        "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=EXAMPLE",
    }


def ses_post(notification: dict, **extra):
    return post(
        reverse("mailsync:smart_bcc_amazon_ses"),
        data=json.dumps(notification),
        content_type="text/plain; charset=UTF-8",  # what SNS sends
        HTTP_X_AMZ_SNS_MESSAGE_TYPE=notification["Type"],
        HTTP_X_AMZ_SNS_MESSAGE_ID=notification["MessageId"],
        HTTP_X_AMZ_SNS_TOPIC_ARN=notification["TopicArn"],
        **extra,
    )


DKIM_SIGNED = {"DKIM-Signature": "v=1; a=rsa-sha256; d=company.test; s=s1; h=from:to; bh=abc=; b=def="}


def test_amazon_ses_sns_notification_files_the_message(alice, alice_bcc, webhook_settings):
    raw = sent_copy(message_id="<ses-1@company.test>", headers=DKIM_SIGNED)
    assert ses_post(ses_notification(alice_bcc, raw), **basic_auth()).status_code == 200
    (message,) = filed()
    assert message.message_id == "ses-1@company.test"
    assert SmartBccDelivery.objects.get(message=message).channel == "amazon_ses"


def test_amazon_ses_without_basic_auth_is_challenged(alice, alice_bcc, webhook_settings):
    response = ses_post(ses_notification(alice_bcc, sent_copy()))
    assert response.status_code == 401 and "Basic" in response["WWW-Authenticate"]
    assert not filed()


def test_amazon_ses_forged_from_is_not_filed(alice, alice_bcc, webhook_settings):
    notification = ses_notification(alice_bcc, sent_copy(headers=DKIM_SIGNED), spf="FAIL", dkim="FAIL")
    assert ses_post(notification, **basic_auth()).status_code == 200
    assert not filed()
    assert SmartBccDelivery.objects.get(user=alice).reason == Reason.FAILED_AUTHENTICATION


def test_a_retried_refused_delivery_is_listed_once(alice, alice_bcc, webhook_settings):
    notification = ses_notification(alice_bcc, sent_copy(sender="mallory@evil.test"))
    for _attempt in range(2):
        assert ses_post(notification, **basic_auth()).status_code == 200
    assert SmartBccDelivery.objects.filter(user=alice).count() == 1
