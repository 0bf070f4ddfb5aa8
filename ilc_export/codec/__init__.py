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
    "FORMAT_VERSION", "Header", "pack", "unpack", "read_file", "write_atomic", "check_model",
    "EntropyCodec", "BitstreamError", "TablesError", "scale_indices",
    "CodecTables", "compute_model_id", "model_id_of_file",
]
