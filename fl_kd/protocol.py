"""Reading what a Flower message carries, without trusting it: shared by the server and the client side.

Record contents come from another party, so every read here is defensive: a missing record or key gives ``None``
(or an empty mapping), an array is decoded only after its declared dtype and shape agree with its bytes and a
size cap, a whole record only after its count of arrays, their names and their declared bytes in total are within
bounds, and scalars are type-checked. The functions read Flower's ``RecordDict``/``Array`` by attribute
(``array_records``, ``dtype``, ``shape``, ``data``), so the core never imports Flower; ``strategies/`` and
``clients/`` call them instead of writing readers of their own. The names of each protocol's messages and
records live beside it (:mod:`fl_kd.kd.protocol`, :mod:`fl_kd.vfl.protocol`).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

#: Largest array a message may carry (bytes); anything bigger is refused before it is decoded.
MAX_ARRAY_BYTES = 256 * 2**20

#: Most dimensions an array may declare (NumPy's own limit is 64; fl-kd sends at most 4): a longer shape is refused
#: before it is multiplied out or quoted.
MAX_DIMS = 32

#: dtypes a numeric array may declare; object and structured dtypes never decode.
NUMERIC_DTYPES = frozenset(
    {"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16", "float32", "float64"}
)


#: Most arrays one record may carry. fl-kd's largest message, a model's ``state_dict`` with its sample count, has
#: a few dozen; a reply of millions of tiny arrays would cost memory and time before any name was read.
MAX_RECORD_ARRAYS = 1024

#: Most bytes an array's serialisation may add to its values (NumPy's ``.npy`` header: 128 bytes for fl-kd's shapes).
MAX_HEADER_BYTES = 4096

#: Largest total of declared array bytes in one record, checked from the headers before any array decodes.
MAX_RECORD_BYTES = MAX_ARRAY_BYTES


#: Most characters of a text another party chose (an error reason, a refusal) that the server keeps or logs.
MAX_PARTY_TEXT = 300


class ProtocolError(ValueError):
    """A message does not follow the protocol; the message says how."""


def record(content: Any, name: str) -> Mapping[str, Any]:
    """The record ``name`` of a message's content (or of ``context.state``) as a mapping; empty when absent."""
    try:
        found = content[name] if name in content else None
    except (TypeError, KeyError):
        found = None
    return found if isinstance(found, Mapping) else {}


def declared_nbytes(array: Any, max_bytes: int = MAX_ARRAY_BYTES) -> int:
    """Bytes a Flower ``Array`` declares (its dtype and shape), read from its header alone, nothing decoded.

    Raises
    ------
    ProtocolError
        Not numpy-serialised, an unknown or non-numeric dtype, a negative shape, a declared size beyond
        ``max_bytes``, or bytes that are missing, fewer than the declared size or more than it and a header.
    """
    stype = getattr(array, "stype", None)
    dtype_name = getattr(array, "dtype", None)
    shape = getattr(array, "shape", None)
    data = getattr(array, "data", None)
    if stype != "numpy.ndarray":
        raise ProtocolError(f"array is serialised as {party_text(stype, 40)!r}, expected 'numpy.ndarray'")
    if not isinstance(dtype_name, str) or dtype_name not in NUMERIC_DTYPES:
        raise ProtocolError(f"array declares dtype {party_text(dtype_name, 40)!r}")
    if not isinstance(shape, (list, tuple)) or len(shape) > MAX_DIMS:
        raise ProtocolError(f"array declares shape {party_text(shape, 80)}")
    if not all(isinstance(n, int) and 0 <= n <= max_bytes for n in shape):
        raise ProtocolError(f"array declares shape {party_text(tuple(shape), 80)}")
    size = math.prod(shape) * np.dtype(dtype_name).itemsize
    if size > max_bytes:
        raise ProtocolError(f"array of shape {tuple(shape)} and dtype {dtype_name} exceeds {max_bytes} bytes")
    if not isinstance(data, bytes):
        raise ProtocolError("array bytes are missing")
    if not size <= len(data) <= size + MAX_HEADER_BYTES:
        # Checked here, not after decoding: a small header over a large payload would be decoded whole first.
        raise ProtocolError(
            f"array sends {len(data)} bytes for a declared {size} (dtype {dtype_name}, shape {tuple(shape)})"
        )
    return size


def decode_array(array: Any, max_bytes: int = MAX_ARRAY_BYTES) -> NDArray[Any]:
    """A Flower ``Array`` as a numpy array, after checking its declared dtype and shape against its bytes.

    Raises
    ------
    ProtocolError
        As :func:`declared_nbytes`, or bytes that do not decode to exactly the declared dtype and shape.
    """
    declared_nbytes(array, max_bytes)
    dtype, shape = np.dtype(array.dtype), tuple(array.shape)
    try:
        decoded = array.numpy()
    except Exception as err:  # noqa: BLE001 - any decoding failure of foreign bytes is a protocol error
        raise ProtocolError(f"array bytes do not decode: {type(err).__name__}") from None
    if not isinstance(decoded, np.ndarray) or decoded.dtype != dtype or decoded.shape != shape:
        raise ProtocolError(f"array bytes do not match the declared dtype {dtype.name} and shape {shape}")
    return decoded


def decode_record(
    content: Any,
    record_name: str,
    names: Collection[str] | None = None,
    max_arrays: int = MAX_RECORD_ARRAYS,
    max_bytes: int = MAX_RECORD_BYTES,
) -> dict[str, NDArray[Any]]:
    """Every array of record ``record_name``, decoded only once the record as a whole is within the protocol.

    Before any array decodes: at most ``max_arrays`` arrays, no name outside ``names`` (when given; a missing name
    is the caller's to judge, since it costs nothing), and every header valid with declared sizes summing to at most
    ``max_bytes``. An absent record gives ``{}``.

    Raises
    ------
    ProtocolError
        Saying which of these checks failed, or which array did not decode.
    """
    found = record(content, record_name)
    if len(found) > max_arrays:
        raise ProtocolError(f"record {record_name!r} carries {len(found)} arrays, more than {max_arrays}")
    if names is not None:
        unexpected = sorted(str(name) for name in found if name not in names)
        if unexpected:
            shown = ", ".join(party_text(name, 40) for name in unexpected[:5])
            shown += f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else ""
            raise ProtocolError(f"record {record_name!r} carries arrays that were not asked for: {shown}")
    total = 0
    for name, array in found.items():
        try:
            total += declared_nbytes(array, max_bytes)
        except ProtocolError as err:
            raise ProtocolError(f"array {party_text(name, 40)!r}: {err}") from None
    if total > max_bytes:
        raise ProtocolError(f"record {record_name!r} declares {total} array bytes, more than {max_bytes}")
    decoded = {}
    for name, array in found.items():
        try:
            decoded[str(name)] = decode_array(array, max_bytes)
        except ProtocolError as err:
            raise ProtocolError(f"array {party_text(name, 40)!r}: {err}") from None
    return decoded


def party_text(value: Any, limit: int = MAX_PARTY_TEXT) -> str:
    """``value`` as text of at most about ``limit`` characters, saying how long it was when cut.

    Error reasons and refusals are free text from another party, kept per batch or per round in a run's history
    and logs; an 8 MB reason copied into each would grow the server's memory with every exchange.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        text = f"an int of {value.bit_length()} bits"  # str() refuses ints past 4,300 digits, and they are no reason
    else:
        try:
            text = str(value)
        except ValueError:  # such an int inside a list, say: whatever a party sends must not stop the run
            text = f"a {type(value).__name__} that does not print"
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def array_of(content: Any, record_name: str, key: str) -> NDArray[Any] | None:
    """Array ``key`` of record ``record_name``, decoded with :func:`decode_array`; ``None`` when absent."""
    found = record(content, record_name).get(key)
    return None if found is None else decode_array(found)


def scalar_of(content: Any, record_name: str, key: str) -> Any:
    """Scalar ``key`` of record ``record_name`` as sent (``None`` when absent); check its type where used."""
    return record(content, record_name).get(key)


def number_of(content: Any, record_name: str, key: str) -> float | None:
    """A finite real number ``key`` of record ``record_name``; ``None`` when absent or not a finite number."""
    return finite_number(scalar_of(content, record_name, key))


def finite_number(value: Any) -> float | None:
    """``value`` as a float when it is a finite real number (not a bool); else ``None``.

    Flower's records hold Python ints of any size in memory (simulation passes messages by pickle, not gRPC's 64
    bits), and ``math.isfinite`` or ``float`` raise ``OverflowError`` past about 1e308: such an int is no number here.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, int) and value.bit_length() > 64:
        return None
    return float(value) if math.isfinite(value) else None


def int_of(content: Any, record_name: str, key: str) -> int | None:
    """A whole number ``key`` of record ``record_name`` (an int, or a float with no fraction); else ``None``."""
    value = number_of(content, record_name, key)
    return int(value) if value is not None and value.is_integer() else None


def payload_nbytes(content: Any) -> int:
    """Array bytes a message carries (each array's declared ``nbytes``, no serialisation headers), nothing decoded.

    Both runtimes count alike this way. An array whose header is not valid counts with the raw bytes it sent, and
    no array counts more than the raw bytes it sent, so a header that lies about its shape cannot inflate the figure.
    """
    total = 0
    for found in getattr(content, "array_records", {}).values():
        for array in found.values():
            data = getattr(array, "data", b"")
            sent = len(data) if isinstance(data, bytes) else 0
            try:
                total += min(declared_nbytes(array), sent)
            except ProtocolError:
                total += sent
    return total
