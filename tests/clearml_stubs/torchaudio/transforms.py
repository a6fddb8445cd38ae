"""torchaudio.transforms stand-ins (see the package docstring)."""

from __future__ import annotations

import math

import torch


class Resample:
    def __init__(self, orig_freq: int = 16000, new_freq: int = 16000) -> None:
        self.orig, self.new = orig_freq, new_freq

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n = max(1, round(x.shape[-1] * self.new / self.orig))
        return torch.nn.functional.interpolate(x[None], size=n, mode="linear")[0]


def _mel_filters(n_freqs: int, n_mels: int, sample_rate: int) -> torch.Tensor:
    """HTK mel filterbank ``[n_freqs, n_mels]`` (torchaudio's default scale)."""

    def mel(f: float) -> float:
        return 2595.0 * math.log10(1.0 + f / 700.0)

    pts = torch.linspace(mel(0.0), mel(sample_rate / 2), n_mels + 2)
    hz = 700.0 * (10 ** (pts / 2595.0) - 1.0)
    freqs = torch.linspace(0, sample_rate / 2, n_freqs)
    fb = torch.zeros(n_freqs, n_mels)
    for m in range(n_mels):
        lo, mid, hi = hz[m], hz[m + 1], hz[m + 2]
        up = (freqs - lo) / (mid - lo)
        down = (hi - freqs) / (hi - mid)
        fb[:, m] = torch.clamp(torch.minimum(up, down), min=0.0)
    return fb


class MelSpectrogram:
    def __init__(
        self,
        sample_rate: int = 16000,
        n_fft: int = 400,
        hop_length: int | None = None,
        n_mels: int = 128,
        **_: object,
    ) -> None:
        self.rate, self.n_fft, self.n_mels = sample_rate, n_fft, n_mels
        self.hop = hop_length or n_fft // 2

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(
            x,
            self.n_fft,
            self.hop,
            window=torch.hann_window(self.n_fft),
            return_complex=True,
        ).abs() ** 2  # [channels, freqs, frames]
        fb = _mel_filters(spec.shape[-2], self.n_mels, self.rate)
        return torch.matmul(spec.transpose(-1, -2), fb).transpose(-1, -2)


class AmplitudeToDB:
    def __init__(self, stype: str = "power", top_db: float | None = None) -> None:
        self.mult = 10.0 if stype == "power" else 20.0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.mult * torch.log10(torch.clamp(x, min=1e-10))
