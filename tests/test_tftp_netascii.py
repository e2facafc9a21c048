"""Tests for netsvc.tftp.netascii: streaming codec and size counting."""

from __future__ import annotations

import io
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netsvc.tftp.netascii import (
    NetasciiDecoder,
    NetasciiEncoder,
    decode,
    encode,
    encoded_size,
    encoded_size_of_stream,
)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(cut, len(data)) for cut in cuts})
    return [data[a:b] for a, b in itertools.pairwise([0, *points, len(data)])]


def _encode_chunks(chunks: list[bytes]) -> bytes:
    encoder = NetasciiEncoder()
    return b"".join(encoder.encode(chunk) for chunk in chunks) + encoder.flush()


def _decode_chunks(chunks: list[bytes]) -> bytes:
    decoder = NetasciiDecoder()
    return b"".join(decoder.decode(chunk) for chunk in chunks) + decoder.flush()


@pytest.mark.parametrize(
    ("local", "wire"),
    [
        (b"", b""),
        (b"abc", b"abc"),
        (b"\n", b"\r\n"),
        (b"\r", b"\r\0"),
        (b"a\nb\n", b"a\r\nb\r\n"),
        (b"dos\r\n", b"dos\r\0\r\n"),
        (b"\n\r", b"\r\n\r\0"),
        (b"\r\r", b"\r\0\r\0"),
        (b"\0", b"\0"),
        (b"\r\0", b"\r\0\0"),
        (b"\xff\x80\t", b"\xff\x80\t"),
    ],
)
def test_encode_decode_table(local: bytes, wire: bytes) -> None:
    assert encode(local) == wire
    assert decode(wire) == local


@pytest.mark.parametrize(
    ("wire", "local"),
    [
        # Lenient: a CR followed by anything but LF/NUL keeps both bytes.
        (b"a\rb", b"a\rb"),
        (b"\r\r\n", b"\r\n"),
        (b"\r\r\0", b"\r\r"),
        (b"\r\0\n", b"\r\n"),
        (b"\r\n\0", b"\n\0"),
        # Lenient: a bare CR at the very end of the stream is kept.
        (b"end\r", b"end\r"),
        (b"\r", b"\r"),
        # A bare LF is passed through.
        (b"unix\n", b"unix\n"),
    ],
)
def test_decode_leniency(wire: bytes, local: bytes) -> None:
    assert decode(wire) == local


@pytest.mark.parametrize(
    ("chunks", "local"),
    [
        ([b"line\r", b"\nnext"], b"line\nnext"),
        ([b"cr\r", b"\0x"], b"cr\rx"),
        ([b"\r", b"\n"], b"\n"),
        ([b"\r", b"\0"], b"\r"),
        ([b"\r", b"", b"\n"], b"\n"),
        ([b"\r", b"\r", b"\n"], b"\r\n"),
        ([b"\r", b"\r", b"\0"], b"\r\r"),
        ([b"a\r", b"b"], b"a\rb"),
        ([b"a\r"], b"a\r"),
        ([b"", b"\r", b"\r"], b"\r\r"),
    ],
)
def test_decode_cr_at_chunk_edge(chunks: list[bytes], local: bytes) -> None:
    assert _decode_chunks(chunks) == local


def test_decoder_holds_trailing_cr_until_next_chunk() -> None:
    decoder = NetasciiDecoder()
    assert decoder.decode(b"abc\r") == b"abc"
    assert decoder.decode(b"\ndef") == b"\ndef"
    assert decoder.flush() == b""
    assert decoder.decode(b"\r") == b""
    assert decoder.flush() == b"\r"
    assert decoder.flush() == b""


def test_encoder_is_stateless() -> None:
    encoder = NetasciiEncoder()
    assert encoder.encode(b"a\r") == b"a\r\0"
    assert encoder.encode(b"\n") == b"\r\n"
    assert encoder.flush() == b""


def test_every_cr_edge_position_in_a_block_stream() -> None:
    # Encode, then cut the wire bytes into "DATA blocks" of every small size.
    local = b"\r\n\r\r\n\n\r\0x\r" * 5
    wire = encode(local)
    for size in range(1, 12):
        blocks = [wire[i : i + size] for i in range(0, len(wire), size)]
        assert _decode_chunks(blocks) == local


_netascii_bytes = st.lists(st.sampled_from([b"\r", b"\n", b"\0", b"a", b"\xff"]), max_size=200).map(
    b"".join
)


@given(
    st.one_of(st.binary(max_size=300), _netascii_bytes),
    st.lists(st.integers(0, 400), max_size=10),
    st.lists(st.integers(0, 800), max_size=10),
)
def test_round_trip_any_chunking(local: bytes, enc_cuts: list[int], dec_cuts: list[int]) -> None:
    wire = _encode_chunks(_split(local, enc_cuts))
    assert wire == encode(local)
    assert _decode_chunks(_split(wire, dec_cuts)) == local
    assert encoded_size(_split(local, enc_cuts)) == len(wire)


@given(_netascii_bytes, st.lists(st.integers(0, 400), max_size=10))
def test_decode_any_input_is_chunking_independent(wire: bytes, cuts: list[int]) -> None:
    # Arbitrary (not necessarily valid) netascii: chunking never changes the result.
    assert _decode_chunks(_split(wire, cuts)) == decode(wire)


@given(st.binary(max_size=500), st.integers(1, 64))
def test_encoded_size_of_stream(local: bytes, chunk_size: int) -> None:
    assert encoded_size_of_stream(io.BytesIO(local), chunk_size) == len(encode(local))


def test_encoded_size_of_stream_starts_at_position_and_checks_chunk_size() -> None:
    stream = io.BytesIO(b"xx\n\n")
    stream.seek(2)
    assert encoded_size_of_stream(stream) == 4
    with pytest.raises(ValueError):
        encoded_size_of_stream(io.BytesIO(b""), 0)


def test_large_data_round_trips_in_blocks() -> None:
    # 8 MiB with many line ends, cut into 512-byte blocks (CRs land on many block edges).
    local = (b"x" * 60 + b"\n" + b"y" * 3 + b"\r") * (8 * 1024 * 1024 // 65)
    wire = encode(local)
    blocks = [wire[i : i + 512] for i in range(0, len(wire), 512)]
    assert _decode_chunks(blocks) == local


def test_netascii_reader_takes_bytes_like_chunks_from_a_synchronous_reader() -> None:
    from netsvc.tftp.textmode import NetasciiReader

    class BytearrayReader:
        def __init__(self, data: bytes) -> None:
            self.data = bytearray(data)

        def read(self, n: int) -> bytearray:
            chunk, self.data = self.data[:n], self.data[n:]
            return chunk

    reader = NetasciiReader(BytearrayReader(b"a\nb\rc"))
    assert reader.read(100) == b"a\r\nb\r\x00c"
