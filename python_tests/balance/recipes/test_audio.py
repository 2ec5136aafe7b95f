"""The recipes' audio against references computed here: the log spectrogram against a float64 STFT written out
with numpy, WAV decoding against the samples written, the bad files' errors."""

from __future__ import annotations

import pickle
import wave

import numpy as np
import pytest
import torch

from mimo_ext.balance.recipes.audio import (
    SpectrogramSpec,
    check_wav,
    load_spectrogram_file,
    log_spectrogram,
    read_wav,
)
from mimo_ext.balance.recipes.fixtures import write_wav
from mimo_ext.balance.recipes.layout import LayoutError


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one intra-op thread for tiny tensors

def reference_log_spectrogram(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """librosa.stft's definition (up to 0.9) in float64: reflect-pad n_fft // 2 on each side, periodic Hann window,
    frames every hop samples, the one-sided DFT of each; then log(|S| + 1e-7)."""
    padded = np.pad(x.astype(np.float64), n_fft // 2, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    frames = [padded[i : i + n_fft] * window for i in range(0, len(padded) - n_fft + 1, hop)]
    return np.log(np.abs(np.fft.rfft(np.array(frames), axis=1)).T + 1e-7)


@pytest.mark.parametrize("n_fft,hop,length", [(512, 353, 22050 * 3), (64, 17, 1001)])
def test_log_spectrogram_matches_float64_reference(n_fft, hop, length):
    rate = 22050
    t = np.arange(length) / rate
    x = (0.6 * np.sin(2 * np.pi * 440 * t) + 0.05 * np.random.default_rng(0).standard_normal(length)).astype(np.float32)
    ours = log_spectrogram(torch.from_numpy(x), n_fft, hop).numpy()
    ref = reference_log_spectrogram(x, n_fft, hop)
    assert ours.shape == ref.shape == (n_fft // 2 + 1, 1 + length // hop)
    # Compare magnitudes: float32 rounding is relative to the largest bin, and log() would magnify it in empty bins.
    np.testing.assert_allclose(np.exp(ours), np.exp(ref), rtol=0, atol=2e-5 * np.exp(ref).max())


def test_cremad_spectrogram_of_a_known_tone(tmp_path):
    """OGM-GE's CREMA-D transform: a 440 Hz tone at 16 kHz comes out [257, 188], its energy at bin
    440 / (22050 / 512)."""
    rate = 16000
    t = np.arange(rate) / rate
    write_wav(tmp_path / "tone.wav", 0.5 * np.sin(2 * np.pi * 440 * t), rate)
    spec = SpectrogramSpec()(*read_wav(tmp_path / "tone.wav"))
    assert spec.shape == (257, 188)
    assert int(spec.mean(dim=1).argmax()) == round(440 / (22050 / 512))


def test_read_wav_returns_the_samples_written(tmp_path):
    ints = np.array([0, 1, -1, 32767, -32768, 1234], dtype="<i2")
    stereo = np.stack([ints, -ints.astype(np.int32).clip(-32768, 32767).astype("<i2")], axis=1)
    with wave.open(str(tmp_path / "s.wav"), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(stereo.tobytes())
    x, rate = read_wav(tmp_path / "s.wav")
    assert rate == 8000
    np.testing.assert_array_equal(x, (stereo.astype(np.float64) / 32768).mean(axis=1).astype(np.float32))


def test_truncated_and_non_wav_files_are_named(tmp_path):
    write_wav(tmp_path / "a.wav", np.zeros(1000), 16000)
    data = (tmp_path / "a.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[:500])
    with pytest.raises(LayoutError, match=r"cut\.wav: truncated WAV, the header declares 2000 bytes"):
        check_wav(tmp_path / "cut.wav")
    (tmp_path / "text.wav").write_text("not audio")
    with pytest.raises(LayoutError, match=r"text\.wav: not a readable PCM WAV file"):
        read_wav(tmp_path / "text.wav")


def test_pickled_spectrograms_load_numpy_only(tmp_path):
    array = np.arange(12, dtype=np.float64).reshape(3, 4)
    for protocol in (2, 4, 5):
        with open(tmp_path / "ok.pkl", "wb") as f:
            pickle.dump(array, f, protocol=protocol)
        np.testing.assert_array_equal(load_spectrogram_file(tmp_path / "ok.pkl"), array.astype(np.float32))
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump(print, f)  # any callable other than numpy's reconstructors
    with pytest.raises(LayoutError, match=r"evil\.pkl: not a readable spectrogram array \(refusing to load builtins"):
        load_spectrogram_file(tmp_path / "evil.pkl")
