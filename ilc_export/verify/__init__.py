"""Tooling: checking deployed models.

Parity of an export against its checkpoint (``parity``), rate-distortion evaluation and
reports (``rd``, ``report``), reference-model evaluation and robustness checks.

May import: anything below it (contract, codec, backends, pipeline, scale), the reference
package (``ilc_reference``) and torch, polygraphy, matplotlib. Never ``ilc_export.export``
(its peer) or the CLIs. Nothing in the runtime imports this package.
"""
