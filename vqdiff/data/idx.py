"""IDX files, the format of MNIST and Fashion-MNIST, read with numpy alone.

An IDX file is a big-endian header followed by the raw array:

    bytes 0-1   zero
    byte  2     element type (0x08 = uint8, ...)
    byte  3     number of dimensions n
    4n bytes    n dimension sizes, uint32 each
    then        prod(sizes) elements, row-major

The first four bytes read as one uint32 form the magic number: 2051 (0x00000803) for an image file
`[N, rows, cols]` uint8 (16-byte header) and 2049 (0x00000801) for a label file `[N]` uint8 (8 bytes).
"""
import gzip
import os

import numpy as np

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801

_ELEMENT_TYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def parse_idx(data: bytes, *, magic: int | None = None, source: str = "IDX data") -> np.ndarray:
    """Parses the bytes of one (uncompressed) IDX file into a native-endian array.

    Args:
      data: the whole file.
      magic: when given, the magic number the header must carry (`IMAGES_MAGIC`, `LABELS_MAGIC`).
      source: what to call the data in error messages, e.g. its path.

    Raises:
      ValueError: the header is malformed, carries another magic number, or its sizes disagree
        with the number of bytes that follow it.
    """
    if len(data) < 4:
        raise ValueError(f"{source}: {len(data)} bytes, too short for an IDX header.")
    found_magic = int.from_bytes(data[:4], "big")
    if magic is not None and found_magic != magic:
        raise ValueError(
            f"{source}: IDX magic number {found_magic:#010x}, expected {magic:#010x}; "
            "the file is corrupt or not of the expected kind (images 0x00000803, labels 0x00000801)."
        )
    type_code, ndim = data[2], data[3]
    if data[0] != 0 or data[1] != 0 or type_code not in _ELEMENT_TYPES:
        raise ValueError(f"{source}: not an IDX file (magic number {found_magic:#010x}).")
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise ValueError(f"{source}: IDX header of {ndim} dimensions is cut short ({len(data)} bytes).")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dtype = _ELEMENT_TYPES[type_code]
    expected_bytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found_bytes = len(data) - header_size
    if found_bytes != expected_bytes:
        raise ValueError(
            f"{source}: IDX header says shape {shape} ({expected_bytes} bytes of data) "
            f"but {found_bytes} bytes follow the {header_size}-byte header."
        )
    array = np.frombuffer(data, dtype, offset=header_size).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike, *, magic: int | None = None) -> np.ndarray:
    """Reads an IDX file, gzip-compressed when its name ends in `.gz`."""
    path = os.fspath(path)
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            with open(path, "rb") as f:
                data = f.read()
    except (gzip.BadGzipFile, EOFError) as e:
        raise ValueError(f"{path}: not a readable gzip file ({e}).") from e
    return parse_idx(data, magic=magic, source=path)


def read_images(path: str | os.PathLike) -> np.ndarray:
    """Images `[N, rows, cols]` uint8 from an IDX image file (magic 0x00000803)."""
    return read_idx(path, magic=IMAGES_MAGIC)


def read_labels(path: str | os.PathLike) -> np.ndarray:
    """Labels `[N]` uint8 from an IDX label file (magic 0x00000801)."""
    return read_idx(path, magic=LABELS_MAGIC)
