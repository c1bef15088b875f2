"""Rewards served over HTTP: ``serve`` (server) and the ``remote`` reward (client).

Protocol (JSON only — never pickle; standard library on both sides)::

    GET  /health  -> {"status": "ok", "reward": NAME, "modality": ..., "scope": ..., "max_request_bytes": ...}
    POST /score   {"prompts": [...], "metadata": [{...}, ...],            # metadata optional
                   "images": [base64 PNG/JPEG, ...]}                       # or
                   "audio": [base64 WAV, ...]}
               -> {"scores": [float or null (NaN), ...]}
    errors     -> HTTP 4xx/5xx with {"error": "one line"}; the server keeps serving.

Images travel as 8-bit PNGs (values rounded to 1/255) and audio as 16-bit PCM WAVs, so remote scores equal
local scores of the rounded samples. The server listens on loopback (127.0.0.1) unless told otherwise and scores
one request at a time (models are rarely thread-safe) while answering ``/health`` concurrently. Abuse is answered,
never crashed on: a request not fully received within ``--read-timeout`` gets 408 and the connection is cut; a body
over ``--max-request-bytes`` 413; images decoding to more than ``--max-pixels`` in all (decompression bombs,
measured from their headers before decoding) 413; malformed framing or JSON 400/411; scoring past
``--request-timeout`` 504; more than ``--workers`` connections at once 503 (the client retries). One request per
connection (``Connection: close``).

CLI: ``genalign serve-reward NAME [--port P] [--host H] [--arg key=value ...] [--workers N] [--read-timeout S]
[--request-timeout S] [--max-request-bytes B] [--max-pixels P]`` (:func:`serve_main`).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional

import torch

from ..errors import ConfigError, GenalignError, RewardError
from ..registry import REWARDS
from ..utils.argtypes import OneLineParser, int_range, positive_float, positive_int
from .base import Reward, build_reward
from .encoders import decode_image, decode_wav, encode_png, encode_wav

DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_PIXELS = 64 * 1024 * 1024  # decoded pixels per request (~0.8 GB as float32 RGB)
DEFAULT_WORKERS = 16


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _decode_b64(item: Any, what: str) -> bytes:
    if not isinstance(item, str):
        raise BadRequest(400, f"{what} must be a base64 string")
    try:
        return base64.b64decode(item, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(400, f"{what} is not valid base64") from None


def _image_pixels(raw: bytes) -> int:
    """Pixels an encoded image would decode to, read from its header only (0 when unreadable: decoding then
    reports it)."""
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(raw)) as im:
            w, h = im.size
    except Image.DecompressionBombError as e:  # over Pillow's own limit (2 x Image.MAX_IMAGE_PIXELS)
        raise BadRequest(413, f"image refused as a decompression bomb: {e}") from None
    except Exception:  # noqa: BLE001 - any unreadable header: decode_image gives the one-line error
        return 0
    return int(w) * int(h)


def parse_request(body: bytes, modality: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Dict[str, Any]:
    """Validate a /score body and decode its samples; raises BadRequest with a one-line message.

    Images are measured from their headers before decoding: more than ``max_pixels`` in all is refused (413),
    so a few kilobytes of PNG cannot make the server allocate gigabytes.
    """
    try:
        req = json.loads(body.decode("utf-8"))
    except RecursionError:
        raise BadRequest(400, "request body is nested too deeply") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadRequest(400, f"request body is not valid JSON ({e.__class__.__name__})") from None
    if not isinstance(req, dict):
        raise BadRequest(400, "request body must be a JSON object with 'prompts' and 'images' or 'audio'")
    prompts = req.get("prompts")
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise BadRequest(400, "'prompts' must be a list of strings")
    has_img, has_aud = "images" in req, "audio" in req
    if has_img == has_aud:
        raise BadRequest(400, "give exactly one of 'images' (base64 PNG) or 'audio' (base64 WAV)")
    key = "images" if has_img else "audio"
    if modality in ("image", "audio") and key != ("images" if modality == "image" else "audio"):
        raise BadRequest(400, f"this reward scores {modality}; send '{'images' if modality == 'image' else 'audio'}'")
    items = req[key]
    if not isinstance(items, list) or not items:
        raise BadRequest(400, f"'{key}' must be a non-empty list of base64 strings")
    if len(items) != len(prompts):
        raise BadRequest(400, f"got {len(items)} {key} but {len(prompts)} prompts")
    metadata = req.get("metadata")
    if metadata is None:
        metadata = [{} for _ in prompts]
    if not isinstance(metadata, list) or len(metadata) != len(prompts) or not all(isinstance(m, dict) for m in metadata):
        raise BadRequest(400, "'metadata' must be a list of objects, one per prompt")
    tensors = []
    rate = None
    pixels = 0
    for i, it in enumerate(items):
        raw = _decode_b64(it, f"{key}[{i}]")
        try:
            if key == "images":
                pixels += _image_pixels(raw)
                if pixels > max_pixels:
                    raise BadRequest(413, f"images up to images[{i}] decode to {pixels} pixels, over the limit of "
                                          f"{max_pixels} pixels per request (--max-pixels)")
                tensors.append(decode_image(raw, f"images[{i}]"))
            else:
                w, sr = decode_wav(raw, f"audio[{i}]")
                if rate is not None and sr != rate:
                    raise BadRequest(400, f"audio[{i}] has sample rate {sr}, audio[0] has {rate}")
                rate = sr
                tensors.append(w)
        except GenalignError as e:
            raise BadRequest(400, str(e)) from None
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) != 1:
        raise BadRequest(400, f"all {key} must have the same shape, got {sorted(shapes)}")
    meta = [dict(m) for m in metadata]
    if rate is not None:
        for m in meta:
            m.setdefault("sample_rate", rate)
    return {"samples": torch.stack(tensors), "prompts": prompts, "metadata": meta}


class _BoundedServer(ThreadingHTTPServer):
    """A threading HTTP server with at most ``workers`` connections in flight: one more is answered 503 at once
    (the client retries with backoff) instead of spawning a thread per connection without bound."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address, handler, workers: int):
        self._slots = threading.BoundedSemaphore(workers)
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            _refuse_busy(request)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)  # starts the connection's thread
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address):  # one line, never a (chained) traceback
        e = sys.exc_info()[1]
        if not isinstance(e, OSError):  # a client that went away is not worth a line
            print(f"genalign serve-reward: connection from {client_address[0]} failed: {type(e).__name__}: {e}",
                  file=sys.stderr, flush=True)


def _refuse_busy(request) -> None:
    body = b'{"error": "server busy: all workers are in use; retry later"}'
    head = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
            b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    try:
        request.settimeout(1.0)
        request.sendall(head + body)
        request.setblocking(False)
        request.recv(1 << 16)  # drop what already arrived, so closing does not reset the answer away
    except OSError:
        pass


def make_server(reward: Reward, host: str = "127.0.0.1", port: int = 0,
                max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES, request_timeout: float = 300.0,
                read_timeout: float = 30.0, workers: int = DEFAULT_WORKERS,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> ThreadingHTTPServer:
    """A ready (not yet serving) HTTP server scoring with ``reward``; ``port=0`` picks a free port.

    ``read_timeout`` bounds the time from connecting to having the whole request (headers and body): a client that
    stops sending is answered 408 and cut off. ``workers`` bounds the connections served at once; ``max_pixels``
    the decoded pixels of one request (decompression bombs: a small PNG of a huge blank image is refused, 413).
    """
    _check_limits(max_request_bytes=max_request_bytes, request_timeout=request_timeout, read_timeout=read_timeout,
                  workers=workers, max_pixels=max_pixels)
    lock = threading.Lock()
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reward")
    name = reward.name

    def run_reward(parsed):
        with lock:
            out = reward(parsed["samples"].to(reward.device), parsed["prompts"], parsed["metadata"])
        return [None if not math.isfinite(v) else float(v) for v in out.detach().cpu().double().tolist()]

    class Handler(BaseHTTPRequestHandler):
        timeout = read_timeout + 5.0  # per-recv socket timeout, a backstop: the watchdog bounds the whole request
        protocol_version = "HTTP/1.1"
        server_version = "genalign-reward/1"

        def setup(self):
            super().setup()
            self._expired = False
            self._body_pending = False
            self._watchdog = threading.Timer(read_timeout, self._read_expired)
            self._watchdog.daemon = True
            self._watchdog.start()

        def finish(self):
            self._watchdog.cancel()
            if self._body_pending:  # answered before reading the body: let the client finish sending, briefly
                _linger(self.connection)
            try:
                super().finish()
            except OSError:
                pass

        def _read_expired(self):  # the request did not arrive in time: wake the blocked read (EOF), keep writing
            self._expired = True
            try:
                self.connection.shutdown(socket.SHUT_RD)
            except OSError:
                pass

        def log_message(self, fmt, *args):  # quiet by default; errors are reported in responses
            pass

        def handle_one_request(self):  # as BaseHTTPRequestHandler's, plus 408 on a request that never arrived
            self.close_connection = True  # one request per connection: the read deadline covers all of it
            self.command, self.requestline, self.request_version = None, "", "HTTP/1.1"
            try:
                self.raw_requestline = self.rfile.readline(65537)
            except TimeoutError:
                self._expired = True
                self.raw_requestline = b""
            if not self.raw_requestline or not self.raw_requestline.endswith(b"\n"):
                if self._expired or self.raw_requestline:
                    self._error(408 if self._expired else 400, self._late() if self._expired else
                                "incomplete request line")
                return
            if len(self.raw_requestline) > 65536:
                self._error(414, "request line too long")
                return
            try:
                if not self.parse_request():  # sends its own error (via send_error below)
                    return
            except TimeoutError:
                self._expired = True
                self._error(408, self._late())
                return
            method = getattr(self, "do_" + self.command, None)
            if method is None:
                self._error(501, f"unsupported method '{self.command}'; valid: GET /health, POST /score")
                return
            method()
            self.close_connection = True

        def handle_expect_100(self):  # curl sends large bodies only after "100 Continue": refuse oversize first
            length = (self.headers.get("Content-Length") or "").strip()
            if length.isdigit() and int(length) > max_request_bytes:
                self._error(413, f"request of {length} bytes exceeds the limit of {max_request_bytes} bytes")
                return False
            return super().handle_expect_100()

        def _late(self) -> str:
            return f"request not received within the read timeout of {read_timeout:g} s"

        def send_error(self, code, message=None, explain=None):  # parse errors, as JSON, one line
            if self.request_version == "HTTP/0.9":  # answer with a status line all the same
                self.request_version = "HTTP/1.1"
            if self._expired:
                code, message = 408, self._late()
            self._error(code, message or "malformed request")

        def _error(self, status: int, message: str) -> None:
            self._send(status, {"error": message})

        def _send(self, status: int, obj: Dict[str, Any]) -> None:
            data = json.dumps(obj).encode("utf-8")
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data)
                self.wfile.flush()
            except OSError:  # the client went away; nothing to tell it
                pass
            self.close_connection = True

        def do_GET(self):
            self._watchdog.cancel()
            if self._expired:
                self._error(408, self._late())
            elif self.path.rstrip("/") == "/health":
                self._send(200, {"status": "ok", "reward": name, "modality": reward.modality, "scope": reward.scope,
                                 "max_request_bytes": max_request_bytes, "max_pixels": max_pixels,
                                 "read_timeout": read_timeout, "workers": workers})
            else:
                self._error(404, f"unknown path '{self.path}'; valid: GET /health, POST /score")

        def _read_body(self) -> bytes:
            if self._expired:
                raise BadRequest(408, self._late())
            if self.path.rstrip("/") != "/score":
                raise BadRequest(404, f"unknown path '{self.path}'; valid: GET /health, POST /score")
            if self.headers.get("Transfer-Encoding"):
                raise BadRequest(411, "chunked bodies are not accepted; send a Content-Length header")
            length = (self.headers.get("Content-Length") or "").strip()
            if not length.isdigit():
                raise BadRequest(411, "a Content-Length header (a non-negative integer) is required")
            length = int(length)
            if length > max_request_bytes:
                self._body_pending = True
                raise BadRequest(413, f"request of {length} bytes exceeds the limit of {max_request_bytes} bytes")
            self._body_pending = True
            try:
                body = self.rfile.read(length)
            except TimeoutError:
                raise BadRequest(408, self._late()) from None
            self._watchdog.cancel()  # the request is in: scoring has its own limit (request_timeout)
            if len(body) < length:
                if self._expired:
                    raise BadRequest(408, self._late())
                raise BadRequest(400, f"request body of {len(body)} bytes is shorter than its Content-Length {length}")
            self._body_pending = False
            return body

        def do_POST(self):
            try:
                body = self._read_body()
                parsed = parse_request(body, reward.modality, max_pixels)
                fut = pool.submit(run_reward, parsed)
                try:
                    scores = fut.result(timeout=request_timeout)
                except FutureTimeout:
                    raise BadRequest(504, f"scoring took longer than {request_timeout:g} s") from None
                self._send(200, {"scores": scores})
            except BadRequest as e:
                self._error(e.status, str(e))
            except RewardError as e:  # the reward's own input checks are a 4xx; its crashes a 500 (retried)
                cause = e.__cause__
                status = 400 if cause is None or isinstance(cause, (GenalignError, ValueError)) else 500
                self._error(status, str(e))
            except (GenalignError, ValueError) as e:
                self._error(400, f"reward '{name}' rejected the request: {e}")
            except OSError:  # client went away / socket timeout
                self.close_connection = True
            except Exception as e:  # an internal reward error: report it, keep serving
                self._error(500, f"reward '{name}' failed: {type(e).__name__}: {e}")

    server = _BoundedServer((host, port), Handler, workers)
    server._genalign_pool = pool  # type: ignore[attr-defined]
    return server


def _linger(conn, seconds: float = 2.0, limit: int = 256 * 1024 * 1024) -> None:
    """Read and drop what the client is still sending (for at most ``seconds``) before closing, so that closing a
    socket with unread data does not reset the connection and lose the 4xx answer already sent."""
    try:
        conn.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + seconds
        got = 0
        while got < limit:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            conn.settimeout(left)
            chunk = conn.recv(1 << 16)
            if not chunk:
                break
            got += len(chunk)
    except OSError:
        pass


def _check_limits(**limits) -> None:
    for key, value in limits.items():
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
        if key in ("workers", "max_request_bytes", "max_pixels"):
            ok = ok and float(value).is_integer()
        if not ok:
            flag = "--" + key.replace("_", "-")
            raise ConfigError(f"reward server: {flag} is {value!r}; it must be a finite number > 0"
                              + (" (an integer)" if key in ("workers", "max_request_bytes", "max_pixels") else ""))


def serve(reward_name: str, args: Optional[Dict[str, Any]] = None, host: str = "127.0.0.1", port: int = 8765,
          max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES, request_timeout: float = 300.0,
          device: Optional[str] = None, ready: Optional[callable] = None, read_timeout: float = 30.0,
          workers: int = DEFAULT_WORKERS, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Build reward ``reward_name`` with ``args`` and serve it until interrupted (blocking)."""
    _check_limits(max_request_bytes=max_request_bytes, request_timeout=request_timeout, read_timeout=read_timeout,
                  workers=workers, max_pixels=max_pixels)  # before the (maybe slow) reward model loads
    reward = build_reward(reward_name, args or {})
    reward.name = reward_name
    if device:
        reward.to(device)
    server = make_server(reward, host, port, max_request_bytes, request_timeout, read_timeout, workers, max_pixels)
    h, p = server.server_address[:2]
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: reward server listens on {host}, reachable from other machines; it has no authentication",
              file=sys.stderr, flush=True)
    print(f"serving reward '{reward_name}' on http://{h}:{p}", flush=True)
    if ready is not None:
        ready(server)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        server._genalign_pool.shutdown(wait=False, cancel_futures=True)  # type: ignore[attr-defined]


def parse_key_values(items, flag: str = "--arg") -> Dict[str, Any]:
    """``["k=v", ...]`` command-line arguments → a dict, each value parsed as YAML (falling back to the string)."""
    out: Dict[str, Any] = {}
    for kv in items or []:
        if "=" not in kv:
            raise ConfigError(f"{flag} '{kv}' must look like key=value")
        k, v = kv.split("=", 1)
        out[k.strip()] = _parse_value(v)
    return out


def _parse_value(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def serve_main(argv: List[str]) -> int:
    """``genalign serve-reward NAME [--host H] [--port P] [--arg key=value ...]``; returns an exit status."""
    p = OneLineParser(prog="genalign serve-reward", description="Serve a registered reward over HTTP (JSON).")
    p.add_argument("name", metavar="NAME", help="registered reward name or dotted import path")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: loopback only)")
    p.add_argument("--port", type=int_range(0, 65535), default=8765,
                   help="port (0 = pick a free one; the chosen one is printed)")
    p.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE",
                   help="reward constructor argument; VALUE is parsed as YAML (repeatable)")
    p.add_argument("--max-request-bytes", type=positive_int, default=DEFAULT_MAX_REQUEST_BYTES)
    p.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS,
                   help="most decoded image pixels in one request (decompression-bomb guard)")
    p.add_argument("--request-timeout", type=positive_float, default=300.0, help="seconds allowed to score one request")
    p.add_argument("--read-timeout", type=positive_float, default=30.0,
                   help="seconds allowed to receive one whole request; a stalled client is answered 408")
    p.add_argument("--workers", type=positive_int, default=DEFAULT_WORKERS,
                   help="connections served at once; more are answered 503 (retry)")
    p.add_argument("--device", default=None, help="torch device for the reward model (e.g. cuda)")
    ns = p.parse_args(argv)
    args = parse_key_values(ns.arg)
    serve(ns.name, args, ns.host, ns.port, ns.max_request_bytes, ns.request_timeout, ns.device,
          read_timeout=ns.read_timeout, workers=ns.workers, max_pixels=ns.max_pixels)
    return 0


# ----------------------------------------------------------------------------------------------------
# client


@REWARDS.register("remote")
class RemoteReward(Reward):
    """Scores by POSTing to a reward server (``genalign serve-reward``).

    Args:
        url: server base URL, e.g. ``http://127.0.0.1:8765``.
        modality: ``image`` or ``audio`` (what is sent); sample_rate: Hz for audio.
        scope / differentiable: declared by the served reward; ``differentiable`` is always False remotely.
        timeout: total seconds for one call, retries included; retries: attempts after the first;
        backoff: first retry delay in seconds, doubled each time.
    Connection failures and 5xx answers are retried; 4xx answers (bad requests) fail at once.
    """

    differentiable = False
    modality = "any"  # an instance scores what its ``modality`` argument says it sends

    @classmethod
    def declared_modality(cls, args=None) -> str:
        return str((args or {}).get("modality", "image"))

    def __init__(self, url: str = "http://127.0.0.1:8765", modality: str = "image", scope: str = "sample",
                 sample_rate: int = 44100, timeout: float = 120.0, retries: int = 4, backoff: float = 0.5):
        super().__init__()
        if modality not in ("image", "audio"):
            raise ConfigError(f"remote: unknown modality '{modality}'; valid choices: audio, image")
        if scope not in ("sample", "group", "set"):
            raise ConfigError(f"remote: unknown scope '{scope}'; valid choices: group, sample, set")
        self.url = url.rstrip("/")
        self.modality, self.scope = modality, scope
        self.sample_rate = int(sample_rate)
        self.timeout, self.retries, self.backoff = float(timeout), int(retries), float(backoff)

    def _payload(self, samples, prompts, metadata) -> bytes:
        if self.modality == "image":
            if samples.dim() != 4 or samples.shape[1] != 3:
                raise ValueError(f"remote image reward expects (N, 3, H, W), got {tuple(samples.shape)}")
            items = {"images": [base64.b64encode(encode_png(x)).decode("ascii") for x in samples]}
        else:
            if samples.dim() != 3:
                raise ValueError(f"remote audio reward expects (N, C, L), got {tuple(samples.shape)}")
            items = {"audio": [base64.b64encode(encode_wav(x, self.sample_rate)).decode("ascii") for x in samples]}
        return json.dumps({"prompts": list(prompts), "metadata": list(metadata), **items}, default=str).encode("utf-8")

    def health(self, timeout: float = 5.0) -> Dict[str, Any]:
        with urllib.request.urlopen(self.url + "/health", timeout=timeout) as r:
            return json.loads(r.read().decode("utf-8"))

    def score(self, samples, prompts, metadata):
        body = self._payload(samples, prompts, metadata)
        deadline = time.monotonic() + self.timeout
        delay, attempt, last = self.backoff, 0, "no attempt"
        while True:
            attempt += 1
            left = deadline - time.monotonic()
            if left <= 0:
                break
            req = urllib.request.Request(self.url + "/score", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=max(0.1, left)) as r:
                    out = json.loads(r.read().decode("utf-8"))
                scores = out.get("scores") if isinstance(out, dict) else None
                if not isinstance(scores, list) or len(scores) != samples.shape[0]:
                    raise GenalignError(f"remote reward at {self.url} returned a malformed answer")
                return torch.tensor([float("nan") if s is None else float(s) for s in scores], dtype=torch.float32)
            except urllib.error.HTTPError as e:
                try:
                    msg = json.loads(e.read().decode("utf-8")).get("error", "")
                except Exception:
                    msg = e.reason
                if e.code < 500:
                    raise GenalignError(f"remote reward at {self.url} rejected the request (HTTP {e.code}): {msg}") from None
                last = f"HTTP {e.code}: {msg}"
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
                last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            if attempt > self.retries:
                break
            sleep = min(delay, deadline - time.monotonic())
            if sleep <= 0:
                break
            time.sleep(sleep)
            delay *= 2
        raise GenalignError(f"remote reward at {self.url} unreachable after {attempt} attempt(s) within "
                            f"{self.timeout:g} s (last error: {last}); is `genalign serve-reward` running?")
