"""`chatplane dataset export`'s own checks, before any call (docs/datasets.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from chatplane.cli.main import cli


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (("--min-rating", "0"), 2, "0 is not in the range 1<=x<=5"),
        (("--min-rating", "4", "--tenant", "t", "--api-key", "k"), 2, "cannot be combined"),
        (("--min-rating", "4"), 1, "no running stack found"),
    ],
)
def test_export_arguments(tmp_path: Path, extra: tuple[str, ...], code: int, message: str) -> None:
    result = CliRunner().invoke(
        cli,
        [
            *("--data-dir", str(tmp_path), "dataset", "export", "--since", "2026-11-01"),
            *("--out", str(tmp_path / "out"), *extra),
        ],
        env={"CHATPLANE_ADMIN_API_KEY": None},
    )
    assert result.exit_code == code, result.output
    assert message in result.output
    assert not (tmp_path / "out").exists()
