"""JSON Lines manifests read in bounded batches: whole lines, about `CHUNK_BYTES` at a time, each
parsed by pyarrow. Rows may differ in which fields they have and in the types of their values
(a field null at first, a number that later has a fraction), as in a whole-file read, so the
file's schema is found first, chunk by chunk (`file_schema`), and every chunk is then parsed to it
(`typed_batches`): every batch, the scan's and each of Ray Data's, has the same columns and types.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import BinaryIO

import pyarrow as pa
import pyarrow.json as pa_json

CHUNK_BYTES = 2**20
"""Bytes read at once (a longer line is read whole): what a read holds, parsed and unparsed."""


def line_chunks(stream: BinaryIO, size: int = CHUNK_BYTES) -> Iterator[bytes]:
    """The stream's bytes in chunks of whole lines, about `size` each."""
    parts: list[bytes] = []
    while block := stream.read(size):
        end = block.rfind(b"\n") + 1
        if not end:
            parts.append(block)  # a line longer than `size`: read on
            continue
        yield b"".join([*parts, block[:end]])
        parts = [block[end:]]
    rest = b"".join(parts)
    if rest.strip():
        yield rest


def parsed(chunk: bytes, schema: pa.Schema | None = None) -> pa.Table:
    """One chunk's rows: to `schema` where given (a field missing from a row is null), else with
    the types pyarrow infers from the chunk."""
    return pa_json.read_json(
        pa.BufferReader(chunk),
        read_options=pa_json.ReadOptions(use_threads=False, block_size=len(chunk)),
        parse_options=pa_json.ParseOptions(explicit_schema=schema) if schema else None,
    )


def file_schema(stream: BinaryIO) -> pa.Schema | None:
    """The columns and types of all the stream's rows, as a whole-file read infers them (None:
    no rows), read chunk by chunk; the stream is left at its start."""
    schema = None
    for chunk in line_chunks(stream):
        found = parsed(chunk).schema
        schema = found if schema is None else merged(schema, found)
    stream.seek(0)
    return schema


def typed_batches(stream: BinaryIO, schema: pa.Schema | None) -> Iterator[pa.RecordBatch]:
    """The stream's rows, a batch per chunk, each parsed to `schema` (`file_schema`)."""
    for chunk in line_chunks(stream):
        yield from parsed(chunk, schema).to_batches()


def stream_batches(stream: BinaryIO) -> Iterator[pa.RecordBatch]:
    """The rows of a seekable stream in bounded batches, all of one schema: two passes."""
    return typed_batches(stream, file_schema(stream))


def merged(schema: pa.Schema, other: pa.Schema) -> pa.Schema:
    """Both chunks' columns, each of the type that holds the values of both (a null column takes
    the other's type, integers become floats beside floats, timestamps text beside text, as a
    whole-file read has it). Values that no type holds (a number here, text there) raise
    `ArrowInvalid`, as a whole-file read does."""
    try:
        return pa.unify_schemas([schema, other], promote_options="permissive")
    except pa.ArrowTypeError:
        pass
    try:
        return pa.unify_schemas(
            [_times_as_text(schema, other), _times_as_text(other, schema)],
            promote_options="permissive",
        )
    except pa.ArrowTypeError as error:
        raise pa.ArrowInvalid(str(error)) from None


def _times_as_text(schema: pa.Schema, other: pa.Schema) -> pa.Schema:
    """`schema` with each timestamp column that is text in `other` as text."""
    for index, field in enumerate(schema):
        text_there = field.name in other.names and other.field(field.name).type == pa.string()
        if pa.types.is_timestamp(field.type) and text_there:
            schema = schema.set(index, field.with_type(pa.string()))
    return schema


def schema_text(schema: pa.Schema) -> str:
    """`schema` as text (the scan's summary travels as JSON); `schema_of` reads it."""
    return base64.b64encode(schema.serialize().to_pybytes()).decode()


def schema_of(text: str) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))
