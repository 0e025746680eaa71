"""Renditions of recordings: playable audio for inline links, conversions, waveform peaks.

One job per module:

- `request`: what a link asks for (`?format=`, `?peaks=`, `?inline=`), checked.
- `probe`: which container and codec a recording really holds (PyAV), and
  whether browsers play it as it is.
- `convert` and `peaks`: the conversions themselves, pure functions run in
  worker processes.
- `pool`: the bounded process pool they run in.
- `cache`: the on-disk rendition cache (size bound, least recently used
  eviction) and the locks that make one process convert a given rendition.
- `renditions`: what the edge calls; ties the others together.

Importing this package imports nothing heavy: the converter's worker
processes import `convert` alone, the edge imports `renditions`.
"""
