"""The emulators' multipart/form-data parser against what real clients send (requests /
urllib3, aiohttp's RFC 5987 file names, the Edge Impulse SDK's part type) and cut bodies."""

from __future__ import annotations

import pytest
import requests

from tests.emulators.base import parse_multipart


def encoded(files, data=None):
    prepared = requests.Request("POST", "http://x/", files=files, data=data).prepare()
    return prepared.headers["Content-Type"], prepared.body


def test_parts_as_requests_sends_them():
    jpeg = b"\xff\xd8\xff" + bytes(range(256)) * 50 + b"\r\n--not-the-boundary\r\n"
    content_type, body = encoded([("data", ("a b.jpg", jpeg, "image/jpeg")),
                                  ("data", ("sdk.png", b"\x89PNG", "multipart/form-data")),
                                  ("items", (None, '{"k": "v; w"}', "application/json"))], data={"path": "/a;b"})
    parts = parse_multipart(content_type, body)
    assert [(p.name, p.filename, p.content_type) for p in parts] == [
        ("path", None, None), ("data", "a b.jpg", "image/jpeg"), ("data", "sdk.png", "multipart/form-data"),
        ("items", None, "application/json")]
    assert parts[0].text == "/a;b" and parts[1].data == jpeg and parts[2].data == b"\x89PNG"
    assert parts[3].text == '{"k": "v; w"}'


def test_rfc5987_names_quotes_and_preamble():
    body = (b"preamble\r\n--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"K.png\"; "
            b"filename*=utf-8''K%C3%A4se.png\r\nContent-Type: image/png\r\n\r\nPNG\r\n"
            b"--xyz\r\nContent-Disposition: form-data; name=\"q\\\"uote\"\r\n\r\n\r\n--xyz--\r\n")
    parts = parse_multipart('multipart/form-data; boundary="xyz"', body)
    assert [(p.name, p.filename, p.data) for p in parts] == [("file", "Käse.png", b"PNG"), ('q"uote', None, b"")]


@pytest.mark.parametrize("content_type, body", [
    ("application/json", b"{}"),
    ("multipart/form-data", b"--x\r\n"),
    ("multipart/form-data; boundary=x", b"no delimiter at all"),
    ("multipart/form-data; boundary=x", b"--x\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\ncut sho"),
    ("multipart/form-data; boundary=x", b"--x\r\nContent-Disposition: form-data\r\n\r\nv\r\n--x--\r\n"),
    ("multipart/form-data; boundary=x", b"--x\r\nno header block\r\n--x--\r\n"),
])
def test_what_is_not_a_complete_form_is_refused(content_type, body):
    with pytest.raises(ValueError):
        parse_multipart(content_type, body)
