"""The reward server under abuse, on loopback only and bounded in count and time: slow clients, decompression
bombs, oversized and malformed bodies, ~20 of them at once. Each gets a 4xx within its timeout, a connection over
the worker bound gets a 503 at once, no traceback is printed, and a valid request afterwards is scored correctly."""

import base64
import json
import select
import socket
import struct
import threading
import time
import zlib
from urllib.parse import urlparse

import pytest
import torch

from genalign.rewards.base import build_reward
from genalign.rewards.encoders import encode_png

from remote_helpers import Server, post

READ_TIMEOUT = 2.0
WORKERS = 28
MAX_BYTES = 200_000
MAX_PIXELS = 1_000_000
CLIENT_TIMEOUT = READ_TIMEOUT + 6.0  # each abusive client must be answered within this


@pytest.fixture(scope="module")
def server():
    s = Server("remote_helpers:HelperReward", "--max-request-bytes", str(MAX_BYTES), "--read-timeout",
               str(READ_TIMEOUT), "--workers", str(WORKERS), "--max-pixels", str(MAX_PIXELS), "--request-timeout", "30")
    yield s
    s.stop()


def png_of_size(w: int, h: int) -> bytes:
    """A valid 1-bit greyscale PNG of w x h blank pixels: a few kilobytes that decode to w*h pixels."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    z = zlib.compressobj(9)
    row = b"\x00" * (1 + (w + 7) // 8)
    idat = b"".join(z.compress(row) for _ in range(h)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def score_body(images, prompts=None):
    imgs = [base64.b64encode(i).decode() for i in images]
    return json.dumps({"prompts": prompts or ["a"] * len(imgs), "images": imgs}).encode()


def http(body: bytes, length=None, extra=b"") -> bytes:
    n = len(body) if length is None else length
    return (b"POST /score HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: "
            + str(n).encode() + b"\r\n" + extra + b"\r\n" + body)


def raw_client(url, parts, dribble=0.0, half_close=False, timeout=CLIENT_TIMEOUT):
    """Send ``parts`` (bytes, or a float = pause that many seconds), then wait for the answer.

    ``dribble`` > 0: after the parts, keep sending one byte every ``dribble`` seconds (each gap shorter than the
    socket timeout) until the server answers. Returns (status or None, seconds from connecting to the answer)."""
    u = urlparse(url)
    t0 = time.monotonic()
    sock = socket.create_connection((u.hostname, u.port), timeout=timeout)
    data = b""
    try:
        for p in parts:
            if isinstance(p, float):
                time.sleep(p)
            else:
                try:
                    sock.sendall(p)
                except OSError:
                    break
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        while time.monotonic() - t0 < timeout:
            ready, _, _ = select.select([sock], [], [], dribble or 0.2)
            if ready:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
                if b"\r\n\r\n" in data:
                    head, _, rest = data.partition(b"\r\n\r\n")
                    n = [int(ln.split(b":")[1]) for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")]
                    if n and len(rest) >= n[0]:
                        break
            elif dribble:
                try:
                    sock.sendall(b"x")
                except OSError:
                    pass
    except OSError:
        pass
    finally:
        sock.close()
    took = time.monotonic() - t0
    if not data.startswith(b"HTTP/1."):
        return None, took, data
    status = int(data.split(b" ", 2)[1])
    return status, took, data.partition(b"\r\n\r\n")[2]


def abuse_cases():
    img = encode_png(torch.rand(3, 8, 8))
    big = png_of_size(3000, 3000)  # 9 M pixels in ~2 kB: over --max-pixels
    bomb = png_of_size(15000, 15000)  # 225 M pixels: over Pillow's own bomb limit too
    assert len(big) < 10_000 and len(bomb) < MAX_BYTES
    many = score_body([png_of_size(600, 600)] * 3)  # each fine, together over the limit
    nested = b"[" * 50_000 + b"]" * 50_000
    return [
        # (name, parts, kwargs, expected status)
        ("stall mid-body", [http(b'{"prompts": ["a"], ', length=1000)], {}, 408),
        ("stall mid-headers", [b"POST /score HTTP/1.1\r\nHost: x\r\n"], {}, 408),
        ("stall mid-request-line", [b"POST /sco"], {}, 408),
        ("connect and say nothing", [], {}, 408),
        ("dribble the body byte by byte", [http(b"{", length=5000)], {"dribble": 0.4}, 408),
        ("dribble the headers", [b"POST /score HTTP/1.1\r\nX-A: "], {"dribble": 0.4}, 408),
        ("body shorter than Content-Length", [http(b'{"prompts": []}', length=900)], {"half_close": True}, 400),
        ("image over --max-pixels", [http(score_body([big]))], {}, 413),
        ("decompression bomb", [http(score_body([bomb]))], {}, 413),
        ("images together over --max-pixels", [http(many)], {}, 413),
        ("huge Content-Length", [http(b"", length=10**12), b"x" * 50_000], {}, 413),
        ("oversized, asking 100-continue", [http(b"", length=MAX_BYTES + 1, extra=b"Expect: 100-continue\r\n")], {},
         413),
        ("oversized body", [http(b"{" + b" " * (MAX_BYTES + 10) + b"}")], {}, 413),
        ("not JSON", [http(b"\xff\xfe garbage")], {}, 400),
        ("deeply nested JSON", [http(nested[: MAX_BYTES - 10])], {}, 400),
        ("images not base64", [http(score_body([b""]).replace(b'""', b'"%%%"'))], {}, 400),
        ("not an image", [http(score_body([b"GIF89a-not-really"]))], {}, 400),
        ("truncated PNG", [http(score_body([img[: len(img) // 2]]))], {}, 400),
        ("no Content-Length", [b"POST /score HTTP/1.1\r\nHost: x\r\n\r\n{}"], {}, 411),
        ("negative Content-Length", [http(b"{}", length=-5)], {}, 411),
        ("chunked body", [b"POST /score HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"], {}, 411),
        ("unknown method", [b"BREW /score HTTP/1.1\r\nHost: x\r\n\r\n"], {}, 501),
        ("binary request line", [b"\x00\x01\x02 \xff\r\n\r\n"], {}, 400),
        ("header line too long", [b"POST /score HTTP/1.1\r\nX: " + b"a" * 70_000 + b"\r\n\r\n"], {}, 431),
    ]


def test_abusive_clients_all_get_a_4xx_in_time_and_the_server_keeps_serving(server):
    cases = abuse_cases()
    assert 20 <= len(cases) <= WORKERS
    results = {}

    def run(case):
        name, parts, kw, _ = case
        results[name] = raw_client(server.url, parts, **kw)

    threads = [threading.Thread(target=run, args=(c,), daemon=True) for c in cases]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(CLIENT_TIMEOUT + 5)
    wall = time.monotonic() - t0
    bad = []
    for name, _, _, expect in cases:
        status, took, body = results.get(name, (None, None, b""))
        ok = status == expect and took is not None and took < CLIENT_TIMEOUT
        if status is not None and status >= 400:
            ok = ok and "error" in json.loads(body)  # a one-line JSON error, as the protocol says
        if not ok:
            bad.append((name, expect, status, took, body[:200]))
    print(f"\nabuse: {len(cases)} concurrent clients, {len(cases) - len(bad)} answered as expected, wall {wall:.1f} s")
    assert not bad, bad
    for name in ("stall mid-body", "dribble the body byte by byte", "dribble the headers"):
        assert results[name][1] < READ_TIMEOUT + 2.0, (name, results[name][1])  # cut at the read deadline
    # afterwards: valid requests are scored correctly (through the client reward, and a raw POST)
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    s = build_reward("remote", {"url": server.url, "timeout": 60})(x, ["a", "skip", "b"])
    expect = ((x * 255).round() / 255).mean(dim=(1, 2, 3))
    assert torch.isnan(s[1]) and torch.allclose(s[[0, 2]], expect[[0, 2]], atol=1e-6)
    code, out = post(server.url, score_body([encode_png(torch.ones(3, 4, 4))]))
    assert code == 200 and out["scores"] == [1.0]


def test_worker_bound_answers_503_at_once_then_recovers(server):
    u = urlparse(server.url)
    held = []
    for _ in range(WORKERS):  # every worker held by a client stalled mid-body
        s = socket.create_connection((u.hostname, u.port), timeout=CLIENT_TIMEOUT)
        s.sendall(http(b"{", length=100))
        held.append(s)
    time.sleep(0.3)
    status, took, body = raw_client(server.url, [http(score_body([encode_png(torch.rand(3, 4, 4))]))], timeout=5)
    assert status == 503 and took < 2.0 and "busy" in json.loads(body)["error"]
    answers = []
    for s in held:  # each stalled client is cut off with a 408 at the read deadline
        data = b""
        try:
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
        s.close()
        answers.append(data.split(b" ", 2)[1] if data.startswith(b"HTTP/1.1") else data[:40])
    assert answers == [b"408"] * WORKERS
    time.sleep(0.2)
    code, out = post(server.url, score_body([encode_png(torch.zeros(3, 4, 4))]))
    assert code == 200 and out["scores"] == [0.0]


def test_no_traceback_was_printed(server):
    err = server.stop()
    assert "Traceback" not in err, err[-2000:]


@pytest.mark.parametrize("flag,value,needle", [
    ("--max-request-bytes", "-1", "must be an integer > 0"),
    ("--max-request-bytes", "0", "must be an integer > 0"),
    ("--request-timeout", "-5", "must be a number > 0"),
    ("--request-timeout", "inf", "finite"),
    ("--read-timeout", "0", "must be a number > 0"),
    ("--workers", "0", "must be an integer > 0"),
    ("--max-pixels", "ten", "not an integer"),
    ("--port", "70000", "out of range"),
])
def test_bad_limits_are_one_line_errors_at_start_up(capsys, flag, value, needle):
    from genalign.cli import main

    assert main(["serve-reward", "brightness", flag, value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("genalign: error: genalign serve-reward: argument " + flag), err
    assert needle in err[0] and "Traceback" not in err[0]


def test_make_server_rejects_bad_limits():
    from genalign.errors import ConfigError
    from genalign.rewards.remote import make_server

    with pytest.raises(ConfigError, match="--read-timeout is -1.*> 0"):
        make_server(build_reward("brightness"), read_timeout=-1)
    with pytest.raises(ConfigError, match="--workers is 2.5"):
        make_server(build_reward("brightness"), workers=2.5)
