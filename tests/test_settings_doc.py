"""The README's configuration table is generated from Settings and cannot go stale."""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

from stream_app import settings_doc
from stream_app.config import Settings

# A value from_env accepts for each kind of field, different from the default.
SAMPLES = {"store": "rocksdb://elsewhere", "security_protocol": "SSL", "sasl_mechanism": "SCRAM-SHA-256",
           "device": "cpu", "log_level": "debug"}


def _sample(name: str, default: object) -> tuple[str, object]:
    """(environment value, the field value it should give)."""
    if name in SAMPLES:
        return SAMPLES[name], SAMPLES[name]
    if isinstance(default, bool):
        return ("0", False) if default else ("1", True)
    if isinstance(default, int):
        return str(default + 3), default + 3
    if isinstance(default, float):
        return str(default + 0.5), default + 0.5
    if isinstance(default, Path):
        return "some/where", Path("some/where")
    return "sample-value", "sample-value"


def test_readme_table_is_the_generated_one():
    readme = settings_doc.README.read_text()
    assert settings_doc.block_of(readme) == settings_doc.render(), \
        "README configuration table is stale: run python -m stream_app.settings_doc"


def test_every_env_var_from_env_reads_is_in_the_table():
    # found independently of the ast reading: every quoted KAFKA_/CLICKSTREAM_ name in the source
    names = set(re.findall(r"\"((?:KAFKA|CLICKSTREAM)_[A-Z0-9_]+)\"", inspect.getsource(Settings.from_env)))
    assert "KAFKA_BOOTSTRAP_SERVERS" in names and "CLICKSTREAM_PSEUDONYM_KEY" in names
    assert set(settings_doc.all_env_vars()) == names
    block = settings_doc.block_of(settings_doc.README.read_text())
    for name in names:
        assert f"| `{name}` |" in block, f"{name} is read by from_env but not in the README table"


def test_every_setting_has_a_row_with_a_default_and_a_meaning():
    fields = [f.name for f in dataclasses.fields(Settings) if f.init]
    rows = settings_doc.rows()
    assert [r.field for r in rows] == fields
    for r in rows:
        assert r.meaning and r.default, r
    assert set(settings_doc.DESCRIPTIONS) <= set(fields), "DESCRIPTIONS names a field Settings lacks"
    assert settings_doc.field_comments()["batch_max"] == "events per micro-batch"
    assert next(r for r in rows if r.field == "window_seconds").default == "`86400`"
    assert next(r for r in rows if r.field == "emit_valid_events").default == "`0`"


def test_each_documented_variable_sets_its_own_field():
    defaults = Settings()
    for r in settings_doc.rows():
        assert r.env, f"{r.field} is not read from the environment"
        raw, expected = _sample(r.field, getattr(defaults, r.field))
        got = Settings.from_env({r.env: raw})
        assert getattr(got, r.field) == expected, (r.env, r.field)
        changed = [f.name for f in dataclasses.fields(Settings)
                   if f.init and getattr(got, f.name) != getattr(defaults, f.name)]
        # the namespace also prefixes the default app id (the table says so)
        assert changed == [r.field] or (r.field == "namespace" and changed == ["app_id", "namespace"]), \
            (r.env, changed)


def test_check_mode_catches_a_stale_table_and_the_writer_fixes_it(tmp_path, capsys):
    readme = tmp_path / "README.md"
    table = settings_doc.render()
    readme.write_text(f"# t\n\n{settings_doc.BEGIN}\n{table.replace('`6066`', '`6067`')}\n"
                      f"{settings_doc.END}\n\nafter\n")
    assert settings_doc.main(["--readme", str(readme), "--check"]) == 1
    assert settings_doc.main(["--readme", str(readme)]) == 0
    assert settings_doc.main(["--readme", str(readme), "--check"]) == 0
    text = readme.read_text()
    assert text.startswith("# t\n\n") and text.endswith("\n\nafter\n")
    assert settings_doc.block_of(text) == table
