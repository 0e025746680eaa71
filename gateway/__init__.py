"""storage-gateway: serve call recordings behind encrypted links."""

__version__ = "0.1.0"
