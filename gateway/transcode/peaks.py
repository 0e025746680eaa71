"""Waveform peaks in the JSON format of BBC's audiowaveform (read by peaks.js and wavesurfer.js).

Pure: 16-bit mono samples in, the JSON document out:

    {"version": 2, "channels": 1, "sample_rate": 8000, "samples_per_pixel": 4800,
     "bits": 8, "length": 1000, "data": [min0, max0, min1, max1, …]}

Each pixel holds the smallest and largest sample of its `samples_per_pixel`
samples (the last pixel may hold fewer), as 8-bit values: the 16-bit sample
divided by 256, rounded down. That is the sample's high byte, so only high
bytes are kept, and minimum and maximum are taken over bytes (C loops over
bytes, not Python integers: about three times faster than over 16-bit
samples).

The number of samples is known only once everything is decoded, so the
builder starts from an estimate and, should the recording prove longer,
merges neighbouring pixels (doubling samples_per_pixel, which keeps every
value exact) to stay within the requested width.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any

VERSION = 2
BITS = 8
# The high byte of a native 16-bit sample, and a table mapping a signed byte
# to an unsigned one of the same order (-128 -> 0, 0 -> 128, 127 -> 255).
_HIGH = 1 if sys.byteorder == "little" else 0
_ORDERED = bytes(value ^ 0x80 for value in range(256))


class PeaksBuilder:
    def __init__(self, sample_rate: int, pixels: int, estimated_samples: int | None) -> None:
        if pixels < 1:
            raise ValueError("pixels must be at least 1")
        self.sample_rate = sample_rate
        self.pixels = pixels
        if estimated_samples and estimated_samples > 0:
            self.samples_per_pixel = max(1, math.ceil(estimated_samples / pixels))
        else:
            self.samples_per_pixel = max(1, sample_rate // 100)
        self.samples = 0
        self._mins: list[int] = []  # ordered bytes (value + 128)
        self._maxs: list[int] = []
        self._pending = bytearray()  # ordered high bytes not yet making a whole pixel

    def add(self, data: bytes | bytearray | memoryview) -> None:
        """Append mono 16-bit samples in native byte order."""
        high = bytes(data)[_HIGH::2].translate(_ORDERED)
        self.samples += len(high)
        pending = self._pending
        pending += high
        step = self.samples_per_pixel
        whole = len(pending) // step * step
        if whole:
            mins, maxs = self._mins, self._maxs
            for start in range(0, whole, step):
                block = pending[start : start + step]
                mins.append(min(block))
                maxs.append(max(block))
            del pending[:whole]
        while len(self._mins) > 2 * self.pixels and len(self._mins) % 2 == 0:
            self._merge()

    def _merge(self) -> None:
        """Twice as many samples per pixel: each pixel becomes the union of two neighbours."""
        mins, maxs = self._mins, self._maxs
        self._mins = [min(mins[i : i + 2]) for i in range(0, len(mins), 2)]
        self._maxs = [max(maxs[i : i + 2]) for i in range(0, len(maxs), 2)]
        self.samples_per_pixel *= 2

    def finish(self) -> dict[str, object]:
        """The audiowaveform document; samples left over make the last, shorter pixel."""
        if self._pending:
            self._mins.append(min(self._pending))
            self._maxs.append(max(self._pending))
            self._pending.clear()
        while len(self._mins) > self.pixels:
            self._merge()
        data: list[int] = []
        for low, high in zip(self._mins, self._maxs):
            data.append(low - 128)
            data.append(high - 128)
        return {
            "version": VERSION,
            "channels": 1,
            "sample_rate": self.sample_rate,
            "samples_per_pixel": self.samples_per_pixel,
            "bits": BITS,
            "length": len(self._mins),
            "data": data,
        }


def interleaved(documents: list[dict[str, Any]]) -> dict[str, Any]:
    """One document with a series per channel from one per channel (the same length each), as
    audiowaveform writes several channels: per pixel, each channel's minimum and maximum in turn."""
    first = documents[0]
    series = [document["data"] for document in documents]
    data = []
    for pixel in range(first["length"]):
        for values in series:
            data += values[2 * pixel : 2 * pixel + 2]
    return {**first, "channels": len(documents), "data": data}


def dumps(document: dict[str, object]) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()
