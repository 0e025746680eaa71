"""Renditions of recordings: playable audio for inline links, conversions, waveform peaks.

One job per module:

- `request`: what a link asks for (`?format=`, `?peaks=`, `?inline=`), checked.
- `probe`: which container and codec a recording really holds (PyAV), and
  whether browsers play it as it is.
- `convert` and `peaks`: the conversions themselves, pure functions run in
  worker processes.
- `pool`: the bounded process pools probing and conversions run in.
- `cache`: the on-disk rendition cache (size bound, least recently used
  eviction) and the locks that make one process convert a given rendition.
- `growing`: a PCM WAV rendition sent while the converter writes it.
- `renditions`: what the edge calls; ties the others together.

Importing this package imports nothing heavy: the pool's processes import
`convert` and `probe` (PyAV), the edge imports `renditions`, and PyAV only
with its first conversion.
"""
