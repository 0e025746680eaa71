"""What the tests share, one module per job (imported as `support.<module>`; pytest puts tests/ on the path).

- `storage`: the shared storage folder (known files, token paths, a secret outside it).
- `keys`: fresh keys, and a token a key cannot read.
- `http`: requests to a real server, raw exchanges, the raw-response and multipart parsers.
- `processes`: `storage-gateway serve`/`api` and nginx as real processes.
- `proc`: what /proc says about a process (descriptors, memory, children, TCP connections).
- `polling`: waiting, bounded, for something to become true.
- `s3`: moto as a real S3 endpoint, and a boto3 client to fill it.
- `ops`: metrics scraped and parsed, a download held open mid-body, what a new client gets, JSON log lines.
- `recordings`: audio and video made with ffmpeg.
- `browser`: headless Chromium through Playwright.
"""
