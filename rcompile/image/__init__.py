"""Programming image v1 (``.rimg``): in-memory records and the binary container.

The image is what a factory programmer needs to write one chip and what the verifying runtime
needs to emulate it: a header (chip, model, compiler, options, device), the digital graph with
its crossbar weights stripped, the per-layer intent, and per used physical tile the target level
of every cell plus the slices that say which logical rows and outputs sit where.
The byte layout is specified in ``docs/image-format.md``; in short::

    MAGIC (8 bytes) | u32 version | section* ;  section = tag(4) | u64 n | payload(n) | sha256(32)
    sections, in order: HEAD, GRPH, LAYR x layers, TILE x used tiles (increasing index), END.

HEAD, LAYR and TILE payloads are *records*: ``u32 J | JSON(J) | pad to 8 | arrays`` where the
JSON ``{"meta": {...}, "arrays": [[name, dtype, shape, offset, nbytes], ...]}`` places every
little-endian C-order array in the data area. All integers are little-endian, all JSON is
canonical (sorted keys, no spaces, ASCII), so one :class:`Image` always encodes to the same bytes.

:func:`encode` / :func:`decode` convert between an :class:`Image` and bytes, :func:`write` /
:func:`read` do the same atomically on files, :func:`describe` / :func:`summary_dict` render an
image for ``rcompile inspect``. :func:`decode` trusts nothing: every structural and semantic
defect becomes one :class:`~rcompile.errors.BadImage` line naming the file and the defect.
"""

from rcompile.image.container import decode, encode, read, write
from rcompile.image.header import BuildOptions, ImageHeader
from rcompile.image.records import (
    ALIGN,
    DIGEST_BYTES,
    MAGIC,
    MAX_IMAGE_BYTES,
    MAX_JSON_BYTES,
    PREAMBLE,
    SECTION_HEAD,
    SLICED_VERSION,
    TAG_END,
    TAG_GRPH,
    TAG_HEAD,
    TAG_LAYR,
    TAG_TILE,
    TAGS,
    VERSION,
    VERSIONS,
    Image,
    LayerRecord,
    SliceRecord,
    TileRecord,
)
from rcompile.image.summary import describe, summary_dict, used_mask

__all__ = [
    "ALIGN", "DIGEST_BYTES", "MAGIC", "MAX_IMAGE_BYTES", "MAX_JSON_BYTES", "PREAMBLE",
    "SECTION_HEAD", "TAGS", "TAG_END", "TAG_GRPH", "TAG_HEAD", "TAG_LAYR", "TAG_TILE", "VERSION",
    "SLICED_VERSION", "VERSIONS",
    "BuildOptions", "Image", "ImageHeader", "LayerRecord", "SliceRecord", "TileRecord",
    "decode", "describe", "encode", "read", "summary_dict", "used_mask", "write",
]
