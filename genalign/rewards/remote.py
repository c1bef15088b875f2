"""Rewards served over HTTP: ``serve`` (server) and the ``remote`` reward (client).

Protocol (JSON only — never pickle; standard library on both sides)::

    GET  /health  -> {"status": "ok", "reward": NAME, "modality": ..., "scope": ..., "max_request_bytes": ...}
    POST /score   {"prompts": [...], "metadata": [{...}, ...],            # metadata optional
                   "images": [base64 PNG/JPEG, ...]}                       # or
                   "audio": [base64 WAV, ...]}
               -> {"scores": [float or null (NaN), ...]}
    errors     -> HTTP 4xx/5xx with {"error": "one line"}; the server keeps serving.

Images travel as 8-bit PNGs (values rounded to 1/255) and audio as 16-bit PCM WAVs, so remote scores equal
local scores of the rounded samples. The server listens on loopback (127.0.0.1) unless told otherwise, limits
the request size, times out slow reads and slow scoring (HTTP 504), and scores one request at a time (models
are rarely thread-safe) while answering ``/health`` concurrently.

CLI: ``genalign serve-reward NAME [--port P] [--host H] [--arg key=value ...]`` (:func:`serve_main`).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import math
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

from ..errors import ConfigError, GenalignError
from ..registry import REWARDS
from .base import Reward, build_reward
from .encoders import decode_image, decode_wav, encode_png, encode_wav

DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024


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


def parse_request(body: bytes, modality: str) -> Dict[str, Any]:
    """Validate a /score body and decode its samples; raises BadRequest with a one-line message."""
    try:
        req = json.loads(body.decode("utf-8"))
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
    for i, it in enumerate(items):
        raw = _decode_b64(it, f"{key}[{i}]")
        try:
            if key == "images":
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


def make_server(reward: Reward, host: str = "127.0.0.1", port: int = 0,
                max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES, request_timeout: float = 300.0,
                read_timeout: float = 30.0) -> ThreadingHTTPServer:
    """A ready (not yet serving) HTTP server scoring with ``reward``; ``port=0`` picks a free port."""
    lock = threading.Lock()
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reward")
    name = reward.name

    def run_reward(parsed):
        with lock:
            out = reward(parsed["samples"].to(reward.device), parsed["prompts"], parsed["metadata"])
        return [None if not math.isfinite(v) else float(v) for v in out.detach().cpu().double().tolist()]

    class Handler(BaseHTTPRequestHandler):
        timeout = read_timeout  # socket timeout: a stalled client cannot hold a thread forever
        protocol_version = "HTTP/1.1"
        server_version = "genalign-reward/1"

        def log_message(self, fmt, *args):  # quiet by default; errors are reported in responses
            pass

        def _send(self, status: int, obj: Dict[str, Any]) -> None:
            data = json.dumps(obj).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status >= 400:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path.rstrip("/") == "/health":
                self._send(200, {"status": "ok", "reward": name, "modality": reward.modality, "scope": reward.scope,
                                 "max_request_bytes": max_request_bytes})
            else:
                self._send(404, {"error": f"unknown path '{self.path}'; valid: GET /health, POST /score"})

        def do_POST(self):
            try:
                if self.path.rstrip("/") != "/score":
                    raise BadRequest(404, f"unknown path '{self.path}'; valid: GET /health, POST /score")
                length = self.headers.get("Content-Length")
                if length is None or not length.isdigit():
                    raise BadRequest(411, "a Content-Length header is required")
                length = int(length)
                if length > max_request_bytes:
                    raise BadRequest(413, f"request of {length} bytes exceeds the limit of {max_request_bytes} bytes")
                body = self.rfile.read(length)
                if len(body) < length:
                    raise BadRequest(400, "request body shorter than its Content-Length")
                parsed = parse_request(body, reward.modality)
                fut = pool.submit(run_reward, parsed)
                try:
                    scores = fut.result(timeout=request_timeout)
                except FutureTimeout:
                    raise BadRequest(504, f"scoring took longer than {request_timeout:g} s") from None
                self._send(200, {"scores": scores})
            except BadRequest as e:
                self._send(e.status, {"error": str(e)})
            except (GenalignError, ValueError) as e:
                self._send(400, {"error": f"reward '{name}' rejected the request: {e}"})
            except OSError:  # client went away / socket timeout while reading
                self.close_connection = True
            except Exception as e:  # an internal reward error: report it, keep serving
                self._send(500, {"error": f"reward '{name}' failed: {type(e).__name__}: {e}"})

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    server._genalign_pool = pool  # type: ignore[attr-defined]
    return server


def serve(reward_name: str, args: Optional[Dict[str, Any]] = None, host: str = "127.0.0.1", port: int = 8765,
          max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES, request_timeout: float = 300.0,
          device: Optional[str] = None, ready: Optional[callable] = None) -> None:
    """Build reward ``reward_name`` with ``args`` and serve it until interrupted (blocking)."""
    reward = build_reward(reward_name, args or {})
    reward.name = reward_name
    if device:
        reward.to(device)
    server = make_server(reward, host, port, max_request_bytes, request_timeout)
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
    p = argparse.ArgumentParser(prog="genalign serve-reward", description="Serve a registered reward over HTTP (JSON).")
    p.add_argument("name", metavar="NAME", help="registered reward name or dotted import path")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8765, help="port (0 = pick a free one; the chosen one is printed)")
    p.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE",
                   help="reward constructor argument; VALUE is parsed as YAML (repeatable)")
    p.add_argument("--max-request-bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES)
    p.add_argument("--request-timeout", type=float, default=300.0, help="seconds allowed to score one request")
    p.add_argument("--device", default=None, help="torch device for the reward model (e.g. cuda)")
    ns = p.parse_args(argv)
    args = parse_key_values(ns.arg)
    if not (0 <= ns.port <= 65535):
        raise ConfigError(f"--port {ns.port} out of range 0..65535")
    serve(ns.name, args, ns.host, ns.port, ns.max_request_bytes, ns.request_timeout, ns.device)
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
