"""Build hook: the optional C range coder (ilc_export.codec._rangecoder).

Everything else lives in pyproject.toml. The extension is optional: without a C compiler
the install still succeeds and the runtime uses constriction (where its wheels exist).
"""
import os
import sys

from setuptools import Extension, setup

args = []
if os.name != "nt":
    # no FMA contraction or fast-math: the CDF quantisation must round exactly like constriction
    args = ["-O3", "-std=c99", "-ffp-contract=off", "-fno-fast-math"]
    if sys.platform == "darwin":
        args.remove("-std=c99")

setup(
    ext_modules=[
        Extension(
            "ilc_export.codec._rangecoder",
            ["ilc_export/codec/_rangecoder.c"],
            extra_compile_args=args,
            optional=True,
        )
    ]
)
