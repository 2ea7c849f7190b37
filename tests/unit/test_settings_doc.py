"""docs/settings.md and `Settings` agree: each one-setting row states the field's default."""

from __future__ import annotations

import re
from pathlib import Path

from streamrec.stream.settings import Settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "settings.md"
ROW = re.compile(r"^\| `STREAMREC_([A-Z0-9_]+)` \| `([^`]*)` \|", re.M)


def _same(documented: str, default: object) -> bool:
    if default is None:  # derived from other settings (`<data_dir>/index`): said in words
        return True
    if isinstance(default, bool):
        return documented == str(default).lower()
    if isinstance(default, int | float):
        return float(documented) == float(default)
    return documented == str(default)


def test_every_one_setting_row_states_the_default() -> None:
    rows = ROW.findall(DOC.read_text())
    assert len(rows) > 30, "the table's rows were not found"
    fields = Settings.model_fields
    unknown = [name for name, _ in rows if name.lower() not in fields]
    assert not unknown, f"rows that are not settings: {unknown}"
    wrong = {name: (documented, fields[name.lower()].default) for name, documented in rows
             if not _same(documented, fields[name.lower()].default)}
    assert not wrong, f"documented default != Settings default: {wrong}"


def test_the_batching_settings_are_documented() -> None:
    text = DOC.read_text()
    for name in ("SDK_LINGER_MS", "PRODUCER_LINGER_MS", "PRODUCER_BATCH_BYTES", "FETCH_MAX_WAIT_MS", "PARTITIONS"):
        assert f"`STREAMREC_{name}`" in text
