"""FastGzip: what every FlowWatch server here answers gzip-accepting clients with."""

from __future__ import annotations

import gzip
import zlib

from flowwatch_gateway.api.compression import STORED_GZIP_MAX_BYTES, FastGzip


def test_a_tiny_message_is_one_stored_block_any_decoder_reads() -> None:
    ping = b"\x12\x08\x08\x96\xc8\xd5\xa9\x06\x10\x01"
    framed = FastGzip().compress(ping)
    assert gzip.decompress(framed) == ping
    assert zlib.decompressobj(wbits=31).decompress(framed) == ping
    # Stored, not deflated: the message itself sits in the member as it is.
    assert ping in framed


def test_a_larger_message_is_deflated_and_reads_back() -> None:
    page = b"".join(b"run-%06d:RUN_STATUS_SUCCEEDED;" % i for i in range(500))
    assert len(page) > STORED_GZIP_MAX_BYTES
    compressed = FastGzip().compress(page)
    assert len(compressed) < len(page) // 4
    assert gzip.decompress(compressed) == page
    assert FastGzip().decompress(compressed, read_max_bytes=len(page)) == page


def test_the_boundary_and_empty_messages() -> None:
    for size in (0, STORED_GZIP_MAX_BYTES - 1, STORED_GZIP_MAX_BYTES):
        data = bytes(range(256)) * (size // 256) + bytes(size % 256)
        assert gzip.decompress(FastGzip().compress(data)) == data
