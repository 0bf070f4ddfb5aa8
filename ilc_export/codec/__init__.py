"""Codec core: integer tables, exact integer scale network, entropy coding, container.

May import: numpy, the entropy coders (constriction or the built-in C coder) and
``ilc_export.contract``. Never torch, ``ilc_reference`` or any other ``ilc_export`` layer:
the tables are derived from a float model by the tooling (``ilc_export.export.tables_build``).
"""
from .bitstream import FORMAT_VERSION, Header, check_model, pack, read_file, unpack
from .entropy import EntropyCodec
from .errors import BitstreamError, TablesError
from .intnet import scale_indices
from .tables import CodecTables

__all__ = [
    "FORMAT_VERSION",
    "BitstreamError",
    "CodecTables",
    "EntropyCodec",
    "Header",
    "TablesError",
    "check_model",
    "pack",
    "read_file",
    "scale_indices",
    "unpack",
]
