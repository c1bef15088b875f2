"""Rewards served by the remote-reward tests (imported by dotted path in the server process)."""

import time

from genalign.rewards.base import Reward


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
