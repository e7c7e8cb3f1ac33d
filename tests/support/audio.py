"""Sound for the media tests: WAV files of a tone, and what a recording holds (its length,
loudness and dominant frequency), in plain Python (no numpy)."""
from __future__ import annotations

import array
import math
import sys
import wave
from dataclasses import dataclass
from pathlib import Path


def write_tone(path: Path, frequency: float, seconds: float, *, rate: int = 48000,
               level: float = 0.5) -> Path:
    """A mono 16-bit WAV of a sine tone (what Chromium's fake microphone plays)."""
    samples = array.array('h', (int(32767 * level * math.sin(2 * math.pi * frequency * i / rate))
                                for i in range(int(rate * seconds))))
    if sys.byteorder != 'little':
        samples.byteswap()
    with wave.open(str(path), 'wb') as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())
    return path


@dataclass
class Sound:
    seconds: float
    rate: int
    mono: list[float]

    def window(self, start: float, length: float) -> list[float]:
        first = int(start * self.rate)
        return self.mono[first:first + int(length * self.rate)]

    def rms(self, start: float = 0.0, length: float | None = None) -> float:
        part = self.window(start, length if length is not None else self.seconds)
        return math.sqrt(sum(x * x for x in part) / len(part)) if part else 0.0

    def dominant(self, start: float | None = None, length: float = 0.5) -> float:
        """The strongest frequency (Hz) in ``length`` seconds from ``start`` (default: the
        middle), scanned at 8 kHz: 10 Hz steps, then 1 Hz around the best."""
        if start is None:
            start = max(0.0, self.seconds / 2 - length / 2)
        step = max(1, self.rate // 8000)
        part = self.window(start, length)[::step]
        rate = self.rate / step
        mean = sum(part) / len(part)
        part = [x - mean for x in part]

        def power(f: float) -> float:
            coeff = 2 * math.cos(2 * math.pi * f / rate)
            s1 = s2 = 0.0
            for x in part:
                s1, s2 = x + coeff * s1 - s2, s1
            return s1 * s1 + s2 * s2 - coeff * s1 * s2

        best = max(range(60, 3000, 10), key=power)
        return float(max(range(best - 10, best + 11), key=power))


def read(path: Path) -> Sound:
    """A 16-bit PCM WAV file, its channels averaged."""
    with wave.open(str(path), 'rb') as wav:
        channels, rate = wav.getnchannels(), wav.getframerate()
        assert wav.getsampwidth() == 2, '%s: not 16-bit PCM' % path
        data = array.array('h', wav.readframes(wav.getnframes()))
    if sys.byteorder != 'little':
        data.byteswap()
    mono = [sum(data[i:i + channels]) / channels / 32768 for i in range(0, len(data), channels)]
    return Sound(len(mono) / rate, rate, mono)
