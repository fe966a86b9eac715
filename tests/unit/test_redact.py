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
            "https://a.blob.core.windows.net/c/v.mp4?sv=REDACTED&sig=REDACTED",
        ),
        (
            "https://host/v.mp4?Signature=s&Expires=1&AWSAccessKeyId=k&x=1",
            "https://host/v.mp4?Signature=REDACTED&Expires=1&AWSAccessKeyId=REDACTED&x=REDACTED",
        ),
        # every name off the harmless list, whatever it is called or however it is written
        ("https://h/v.mp4?key=AIza1", "https://h/v.mp4?key=REDACTED"),
        ("https://h/v.mp4?api_key=k1&format=mp4", "https://h/v.mp4?api_key=REDACTED&format=mp4"),
        ("https://h/v.mp4?password=hunter2", "https://h/v.mp4?password=REDACTED"),
        ("https://h/v.mp4?Authorization=Bearer%20x", "https://h/v.mp4?Authorization=REDACTED"),
        ("https://h/v.mp4?hdnts=exp=1~acl=*~hmac=ab", "https://h/v.mp4?hdnts=REDACTED"),
        ("https://h/v.mp4?__token__=exp=1~hmac=ab", "https://h/v.mp4?__token__=REDACTED"),
        ("https://h/v.mp4?%73ig=s1&%66ormat=mp4", "https://h/v.mp4?%73ig=REDACTED&%66ormat=mp4"),
        ("https://h/v.mp4?FORMAT=mp4&Width=640", "https://h/v.mp4?FORMAT=mp4&Width=640"),
        ("https://h/v.mp4?format=mp4;sig=s1", "https://h/v.mp4?format=mp4;sig=REDACTED"),
        ("https://h/v.mp4?s3cr3t&t=5", "https://h/v.mp4?REDACTED&t=5"),  # a bare value
        ("https://h/v.mp4#t=5&access_token=a1", "https://h/v.mp4#t=5&access_token=REDACTED"),
        ("https://host/v.mp4?a=1&&b=%2F", "https://host/v.mp4?a=REDACTED&&b=REDACTED"),
        # userinfo, whatever characters the password holds
        ("https://user:p(ss@host/v.mp4", "https://REDACTED@host/v.mp4"),
        ("https://u:p@ss@host/v.mp4", "https://REDACTED@host/v.mp4"),
        ("https://u:[p]'s\"@host/v.mp4", "https://REDACTED@host/v.mp4"),
        # IPv6-literal hosts
        (
            "https://[::1]:9000/b/k.mp4?X-Amz-Signature=s1&X-Amz-Date=20261130T0",
            "https://[::1]:9000/b/k.mp4?X-Amz-Signature=REDACTED&X-Amz-Date=20261130T0",
        ),
        ("http://u:pw@[fe80::1%25eth0]/v.mp4", "http://REDACTED@[fe80::1%25eth0]/v.mp4"),
        ("https://[::1/v.mp4?sig=s1", "https://[::1/v.mp4?sig=REDACTED"),  # not a valid URI
        # kept as they are
        ("https://host/a%20(1)/v.mp4?versionId=3", "https://host/a%20(1)/v.mp4?versionId=3"),
        ("s3://bucket/key with spaces.mp4", "s3://bucket/key with spaces.mp4"),
        ("/local/v.mp4", "/local/v.mp4"),
    ],
)
def test_secrets_are_redacted_and_everything_else_kept(uri, shown):
    assert redact_uri(uri) == shown


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (
            "https://user:p(ss@host/v.mp4: not found",
            "https://REDACTED@host/v.mp4: not found",
        ),
        (
            "could not read https://h/v.mp4?a=(1)&sig=s1[2]'x'.",
            "could not read https://h/v.mp4?a=REDACTED&sig=REDACTED.",
        ),
        (
            "403 (url=URL('https://[::1]:9000/b/k?X-Amz-Signature=s1'))",
            "403 (url=URL('https://[::1]:9000/b/k?X-Amz-Signature=REDACTED'))",
        ),
        (
            'ClientError("https://u:p\'ss@h/v.mp4?key=k1")',
            'ClientError("https://REDACTED@h/v.mp4?key=REDACTED")',
        ),
        (
            '{"uri": "https://h/m.csv?api_key=k1", "format": "csv"}',
            '{"uri": "https://h/m.csv?api_key=REDACTED", "format": "csv"}',
        ),
        ("see <http://[::1]/v.mp4?token=t1>", "see <http://[::1]/v.mp4?token=REDACTED>"),
        ("no uri here: a=b&sig=1", "no uri here: a=b&sig=1"),
    ],
)
def test_uris_in_text_are_redacted_and_the_text_around_them_kept(text, shown):
    assert redact(text) == shown


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
