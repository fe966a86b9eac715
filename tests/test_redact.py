"""Credentials in URIs: redacted where shown, left out of default video ids."""

from __future__ import annotations

import pytest

from vivit_batch.manifest import video_id_for
from vivit_batch.redact import redact, redact_uri, unsigned_uri

SIGNED = (
    "https://bucket.s3.amazonaws.com/a%20b/v.mp4?versionId=3&X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIAX%2F20261130%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20261130T0"
    "&X-Amz-Expires=60&X-Amz-SignedHeaders=host&X-Amz-Security-Token=tok&X-Amz-Signature=abc"
)


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        (
            SIGNED,
            "https://bucket.s3.amazonaws.com/a%20b/v.mp4?versionId=3&X-Amz-Algorithm=AWS4-HMAC-"
            "SHA256&X-Amz-Credential=REDACTED&X-Amz-Date=20261130T0&X-Amz-Expires=60"
            "&X-Amz-SignedHeaders=host&X-Amz-Security-Token=REDACTED&X-Amz-Signature=REDACTED",
        ),
        ("http://user:pw@host:8080/v.mp4", "http://REDACTED@host:8080/v.mp4"),
        ("https://token@host/v.mp4#t=1", "https://REDACTED@host/v.mp4#t=1"),
        (
            "https://a.blob.core.windows.net/c/v.mp4?sv=1&sig=x%2By",
            "https://a.blob.core.windows.net/c/v.mp4?sv=1&sig=REDACTED",
        ),
        (
            "https://host/v.mp4?Signature=s&Expires=1&AWSAccessKeyId=k&x=1",
            "https://host/v.mp4?Signature=REDACTED&Expires=1&AWSAccessKeyId=REDACTED&x=1",
        ),
        ("https://host/v.mp4?a=1&&b=%2F", "https://host/v.mp4?a=1&&b=%2F"),  # unchanged
        ("s3://bucket/key with spaces.mp4", "s3://bucket/key with spaces.mp4"),
        ("/local/v.mp4", "/local/v.mp4"),
    ],
)
def test_secrets_are_redacted_and_everything_else_kept(uri, shown):
    assert redact_uri(uri) == shown


def test_uris_in_messages_are_redacted():
    message = f"{SIGNED}: could not read (ClientResponseError: 403, url=URL('{SIGNED}'))"
    redacted = redact(message)
    assert "abc" not in redacted and "AKIAX" not in redacted and "tok" not in redacted
    assert redacted.count("X-Amz-Signature=REDACTED") == 2
    assert redact("no uri here: a=b&sig=1") == "no uri here: a=b&sig=1"


def test_signed_again_the_same_object_keeps_its_id():
    again = SIGNED.replace("abc", "def").replace("20261130T0", "20261201T0").replace("tok", "t2")
    assert video_id_for(again) == video_id_for(SIGNED)
    assert unsigned_uri(SIGNED) == "https://bucket.s3.amazonaws.com/a%20b/v.mp4?versionId=3"
    assert video_id_for(SIGNED.replace("versionId=3", "versionId=4")) != video_id_for(SIGNED)
    assert unsigned_uri("http://u:p@host/v.mp4") == "http://host/v.mp4"
    plain = "s3://bucket/v.mp4"
    assert unsigned_uri(plain) == plain  # ids of URIs without credentials do not change
