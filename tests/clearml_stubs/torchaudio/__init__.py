"""A stand-in for torchaudio, for running ClearML's urbansounds preprocessing example
(tests/test_clearml_example_scripts.py) where torchaudio cannot be installed: no
torchaudio wheel matches this machine's torch. It implements, on real torch, the four
calls the example makes: ``load`` (16-bit PCM WAV through the ``wave`` module),
``transforms.Resample``, ``transforms.MelSpectrogram`` and ``transforms.AmplitudeToDB``.
The results have torchaudio's shapes; the numbers are close, not bit-identical.
"""

from __future__ import annotations

import wave

import numpy as np
import torch

from . import transforms

__all__ = ["load", "transforms"]


def load(path, normalize: bool = True):  # noqa: ANN001, ANN201 - torchaudio's signature
    """``(waveform [channels, frames] float32, sample_rate)`` of a 16-bit PCM WAV file."""
    with wave.open(str(path), "rb") as w:
        channels, rate, width = w.getnchannels(), w.getframerate(), w.getsampwidth()
        frames = w.readframes(w.getnframes())
    if width != 2:
        raise RuntimeError(f"{path}: only 16-bit PCM is supported by this stand-in")
    data = np.frombuffer(frames, dtype="<i2").reshape(-1, channels).T.astype(np.float32)
    if normalize:
        data /= 32768.0
    return torch.from_numpy(data.copy()), rate
