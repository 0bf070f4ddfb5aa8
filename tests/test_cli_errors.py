"""One error root: the CLIs turn every IlcError (and OSError) into one line and exit 1, once,
in ``cli.common.user_errors``; anything else is a bug and keeps its traceback."""
from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from ilc_export.cli.common import user_error_types, user_errors
from ilc_export.codec.errors import BitstreamError, TablesError
from ilc_export.contract.errors import IlcError
from ilc_export.pipeline.api import CodingError, OutputError
from ilc_export.pipeline.image_io import ImageError


def _app(exc: BaseException) -> typer.Typer:
    app = typer.Typer()

    @app.command()
    @user_errors
    def boom():
        raise exc

    @app.command()
    def other():  # a second command, so `boom` keeps its name
        pass

    return app


@pytest.mark.parametrize("cls", [BitstreamError, TablesError, CodingError, OutputError, ImageError])
def test_runtime_errors_derive_from_the_root(cls):
    assert issubclass(cls, IlcError) and IlcError in user_error_types()


@pytest.mark.parametrize("exc", [BitstreamError("bad  file\n truncated"), OutputError("x.ilc: exists"),
                                 FileNotFoundError(2, "No such file or directory", "a.png")])
def test_user_errors_are_one_line_and_exit_1(exc):
    res = CliRunner().invoke(_app(exc), ["boom"])
    assert res.exit_code == 1, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output


def test_other_errors_keep_their_traceback():
    res = CliRunner().invoke(_app(RuntimeError("a bug")), ["boom"])
    assert isinstance(res.exception, RuntimeError)
