"""Rewards served by the remote-reward tests (imported by dotted path in the server process), and the
test-side helpers: a real server subprocess on loopback and a POST that returns (status, json)."""

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

from genalign.rewards.base import Reward

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


class HelperReward(Reward):
    """Brightness, NaN for the prompt 'skip', after sleeping ``sleep`` seconds."""

    modality = "image"

    def __init__(self, sleep: float = 0.0):
        super().__init__()
        self.sleep = float(sleep)

    def score(self, samples, prompts, metadata):
        time.sleep(self.sleep)
        out = samples.mean(dim=(1, 2, 3)).clone()
        for i, p in enumerate(prompts):
            if p == "skip":
                out[i] = float("nan")
        return out


class AudioPeak(Reward):
    """Peak absolute amplitude of a waveform; checks the sample rate reached the server."""

    modality = "audio"

    def score(self, samples, prompts, metadata):
        assert all(m.get("sample_rate") == 8000 for m in metadata), metadata
        return samples.abs().amax(dim=(1, 2))


class Server:
    def __init__(self, *argv):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, HERE]), HF_HUB_OFFLINE="1")
        code = "import sys; from genalign.rewards.remote import serve_main; sys.exit(serve_main(sys.argv[1:]))"
        self.proc = subprocess.Popen([sys.executable, "-c", code, *argv, "--port", "0"], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env)
        line = {}
        t = threading.Thread(target=lambda: line.setdefault("l", self.proc.stdout.readline()), daemon=True)
        t.start()
        t.join(180)
        if "serving reward" not in line.get("l", ""):
            self.proc.kill()
            raise RuntimeError(f"server did not start: {line.get('l')!r} {self.proc.stderr.read()}")
        self.url = line["l"].strip().rsplit(" ", 1)[1]

    def stop(self) -> str:
        """Stop the server; returns what it wrote to stderr."""
        if self.proc.poll() is None:
            self.proc.kill()
        _, self.stderr = self.proc.communicate(timeout=30)
        return self.stderr


def post(url, body: bytes, path="/score"):
    req = urllib.request.Request(url + path, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
