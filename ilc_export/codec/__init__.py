"""Codec core: integer tables, exact integer scale network, entropy coding, container.

Nothing here imports torch; only ``tables_build`` (deriving the tables from a float
model, once) does, lazily.
"""
from .bitstream import FORMAT_VERSION, Header, check_model, pack, read_file, unpack, write_atomic
from .entropy import EntropyCodec
from .errors import BitstreamError, TablesError
from .intnet import scale_indices
from .tables import CodecTables, compute_model_id, model_id_of_file

__all__ = [
    "FORMAT_VERSION",
    "BitstreamError",
    "CodecTables",
    "EntropyCodec",
    "Header",
    "TablesError",
    "check_model",
    "compute_model_id",
    "model_id_of_file",
    "pack",
    "read_file",
    "scale_indices",
    "unpack",
    "write_atomic",
]
