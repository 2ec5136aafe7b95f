"""Audio for the recipes: WAV files read with the standard library, log-magnitude spectrograms with ``torch.stft``,
and the precomputed spectrogram files some codebases ship (``.npy``, ``.pkl``).

The spectrogram is OGM-GE's (``dataset/CramedDataset.py`` of github.com/GeWu-Lab/OGM-GE_CVPR2022): the clip
loaded at 22,050 Hz (``librosa.load(sr=22050)``), tiled three times and cut to 3 s, clipped to [-1, 1], a short-time
Fourier transform with ``n_fft=512``, ``hop_length=353`` (librosa's defaults otherwise: a periodic Hann window of
``n_fft`` samples, centred frames), then ``log(|S| + 1e-7)``; a ``[257, 188]`` array per clip. Centring pads with
reflection, librosa's default before 0.10 (the version of that code's time; 0.10 changed it to zeros).
"""

from __future__ import annotations

import math
import pickle
import wave
from pathlib import Path

import numpy as np
import torch

from .layout import LayoutError

__all__ = ["SpectrogramSpec", "check_wav", "load_spectrogram_file", "log_spectrogram", "read_wav", "resample"]

_SAMPLE_FORMATS = {1: np.uint8, 2: np.int16, 4: np.int32}  # 24-bit is unpacked by hand


class SpectrogramSpec:
    """How a waveform becomes a spectrogram: ``rate`` (Hz), ``seconds`` (the clip is tiled and cut to this length;
    None keeps its length), ``n_fft``, ``hop``, ``tile`` (how many copies before cutting)."""

    def __init__(self, rate: int = 22050, seconds: float | None = 3.0, n_fft: int = 512, hop: int = 353, tile: int = 3):
        self.rate, self.seconds, self.n_fft, self.hop, self.tile = rate, seconds, n_fft, hop, tile

    def frames(self) -> int | None:
        """Spectrogram frames per clip (fixed when ``seconds`` is), as centred STFT frames: ``1 + samples // hop``."""
        return None if self.seconds is None else 1 + int(self.rate * self.seconds) // self.hop

    def __call__(self, samples: np.ndarray, rate: int) -> torch.Tensor:
        x = resample(samples, rate, self.rate)
        if self.seconds is not None:
            length = int(self.rate * self.seconds)
            x = np.tile(x, self.tile)[:length]
            if len(x) < length:  # a clip shorter than seconds / tile: zeros after it
                x = np.pad(x, (0, length - len(x)))
        x = np.clip(x, -1.0, 1.0)
        return log_spectrogram(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), self.n_fft, self.hop)


def check_wav(path: Path) -> None:
    """Raises :class:`LayoutError` when ``path`` is not a readable PCM WAV file or holds fewer sample bytes than its
    header declares (a truncated copy). Reads the header only."""
    try:
        with wave.open(str(path), "rb") as w:
            declared = w.getnframes() * w.getsampwidth() * w.getnchannels()
            width = w.getsampwidth()
    except FileNotFoundError:
        raise LayoutError(f"{path}: the audio file is missing") from None
    except (wave.Error, EOFError) as e:
        raise LayoutError(f"{path}: not a readable PCM WAV file ({e})") from None
    if width not in (1, 2, 3, 4):
        raise LayoutError(f"{path}: unsupported sample width of {width} bytes")
    size = path.stat().st_size
    if size < declared + 44:  # 44: the smallest RIFF/WAVE header
        raise LayoutError(
            f"{path}: truncated WAV, the header declares {declared} bytes of samples but the file has {size}"
        )


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """The samples of a PCM WAV file as float32 in [-1, 1] (channels averaged to mono), and the sample rate."""
    check_wav(path)
    with wave.open(str(path), "rb") as w:
        rate, width, channels, count = w.getframerate(), w.getsampwidth(), w.getnchannels(), w.getnframes()
        raw = w.readframes(count)
    if len(raw) < count * width * channels:
        raise LayoutError(f"{path}: truncated WAV, {len(raw)} bytes of samples where the header declares more")
    if width == 3:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        ints = (b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)) << 8 >> 8  # sign-extend 24 bits
        x = ints.astype(np.float64) / 2**23
    elif width == 1:  # 8-bit WAV is unsigned, centred at 128
        x = (np.frombuffer(raw, dtype=np.uint8).astype(np.float64) - 128) / 128
    else:
        x = np.frombuffer(raw, dtype=_SAMPLE_FORMATS[width]).astype(np.float64) / 2 ** (8 * width - 1)
    x = x.reshape(-1, channels).mean(axis=1)
    return x.astype(np.float32), rate


def resample(x: np.ndarray, rate: int, target: int) -> np.ndarray:
    """``x`` at ``target`` Hz: a polyphase low-pass resampler (scipy's ``resample_poly``); unchanged when the rates
    agree."""
    if rate == target:
        return x
    try:
        from scipy.signal import resample_poly
    except ImportError:  # pragma: no cover - scipy comes with scikit-learn, a dependency of the data loaders
        raise RuntimeError(f"resampling {rate} Hz audio to {target} Hz needs scipy (pip install scipy)") from None
    g = math.gcd(rate, target)
    return resample_poly(x, target // g, rate // g).astype(np.float32)


def log_spectrogram(x: torch.Tensor, n_fft: int = 512, hop: int = 353) -> torch.Tensor:
    """``log(|STFT(x)| + 1e-7)``, ``[n_fft // 2 + 1, 1 + len(x) // hop]``: periodic Hann window of ``n_fft``,
    frames centred by reflection padding (librosa.stft's defaults up to 0.9)."""
    window = torch.hann_window(n_fft, periodic=True, dtype=x.dtype, device=x.device)
    spec = torch.stft(x, n_fft, hop_length=hop, window=window, center=True, pad_mode="reflect", return_complex=True)
    return torch.log(spec.abs() + 1e-7)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and plain containers only: a spectrogram ``.pkl`` runs no other code when loaded."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),  # pickle protocol 5
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # protocols 0 to 2 store an array's bytes as a latin-1 string
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are read")
        return super().find_class(module, name)


def load_spectrogram_file(path: Path) -> np.ndarray:
    """A precomputed spectrogram: ``.npy`` (numpy, no pickles) or ``.pkl`` (a pickled numpy array, OGM-GE's AVE
    files; only numpy arrays are unpickled), as a 2-D float32 array."""
    try:
        if path.suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        else:
            with open(path, "rb") as f:
                array = _ArrayUnpickler(f).load()
    except FileNotFoundError:
        raise LayoutError(f"{path}: the spectrogram file is missing") from None
    except (ValueError, OSError, EOFError, pickle.UnpicklingError) as e:
        raise LayoutError(f"{path}: not a readable spectrogram array ({e})") from None
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise LayoutError(f"{path}: expected a 2-D spectrogram, got shape {list(array.shape)}")
    return array


def check_spectrogram_file(path: Path) -> None:
    """Raises :class:`LayoutError` when a ``.npy`` spectrogram is missing, truncated or not 2-D (reads its header
    only); a ``.pkl`` is checked for presence (its contents are only known once unpickled)."""
    if not path.is_file():
        raise LayoutError(f"{path}: the spectrogram file is missing")
    if path.suffix != ".npy":
        return
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise LayoutError(f"{path}: not a readable .npy array ({e})") from None
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[0] != 1):
        raise LayoutError(f"{path}: expected a 2-D spectrogram, got shape {list(array.shape)}")
