"""The pipeline: images in, .ilc files out and back, with one model on one backend.

One encode/decode protocol (``codec.ImageCodec``, tiles included), model lookup and backend
selection (``models``: through the backend registry, never by a backend's name), image I/O
and metrics, and the file-level API the CLIs call (``api``).

May import: numpy, Pillow, ``ilc_export.contract``, ``ilc_export.codec`` and
``ilc_export.backends``. Never torch, ``ilc_reference``, or the scale-out and tooling
layers above it (scale, export, verify, cli).
"""
