"""The README's configuration table, derived from `Settings` (never edited by hand).

    python -m stream_app.settings_doc            # rewrites README.md between the settings markers
    python -m stream_app.settings_doc --check    # exit 1 when the README's table is stale
    python -m stream_app.settings_doc --print    # the table on stdout

Every row comes from config.py: the fields of the `Settings` dataclass and their defaults, the
environment variable `Settings.from_env` reads for each (found in its source with `ast`), and a
one-line meaning: `DESCRIPTIONS` below where it has one (fields config.py leaves uncommented, or
whose comment only reads well in place), else the field's trailing comment, else the comment block
right above it.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import textwrap
import tokenize
from pathlib import Path
from typing import Any

from .config import Settings

README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN, END = "<!-- settings:begin -->", "<!-- settings:end -->"

# Meanings for fields config.py leaves uncommented, or whose comment needs its neighbours.
DESCRIPTIONS = {
    "bootstrap": "Kafka bootstrap servers, `host:port[,host:port...]`",
    "app_id": "Faust app id: names the consumer group and the state changelog topic",
    "partitions": "partitions of every topic the service creates (input, predictions, "
                  "dead letters, changelog); choose once: growing it moves users' state",
    "data_dir": "the worker's local RocksDB state (one per worker; a cache of the changelog)",
    "store": "Faust table store; `rocksdb://` is the only one supported",
    "web_host": "address the HTTP servers bind to (the worker's `/metrics`, `/health`, `/ready`; "
                "the retrain worker's)",
    "web_port": "port of the worker's HTTP server",
    "torch_threads": "torch threads per worker; 0 = torch's default pool (one per core), which "
                     "spin-waits against the event loop and the broker: scale with partitions and "
                     "workers instead",
    "log_level": "log level of the worker",
    "instance_id": "static group membership id: a restarted worker with the same id gets its "
                   "partitions back at once; `\"\"` = derived from the host name, data dir and web "
                   "address (stable across restarts, distinct between workers)",
    "retrain_max_events": "the most events a retrain cycle reads (the newest within the lookback)",
    "sasl_username": "SASL user (required with `SASL_*` protocols)",
    "sasl_password": "SASL password (required with `SASL_*`; never shown in `repr(Settings)`)",
    "ssl_keyfile": "private key of the client certificate, PEM",
}

# Defaults that from_env computes instead of taking from the dataclass.
DEFAULTS = {"app_id": "`$CLICKSTREAM_NAMESPACE` + `clickstream-gru`"}


@dataclasses.dataclass(frozen=True)
class Row:
    field: str
    env: str  # "" when from_env does not read this setting
    default: str  # as written in the table
    meaning: str


def _from_env_call() -> ast.Call:
    """The `cls(...)` call that from_env returns."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(Settings.from_env)))
    for node in ast.walk(tree):
        if isinstance(node, ast.Return) and isinstance(node.value, ast.Call):
            return node.value
    raise RuntimeError("Settings.from_env no longer returns cls(...): update settings_doc.py")


def _get_names(node: ast.AST) -> list[str]:
    """String keys of every `<mapping>.get("NAME", ...)` inside `node`, in source order."""
    calls = [n for n in ast.walk(node) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
             and n.func.attr == "get" and n.args and isinstance(n.args[0], ast.Constant)
             and isinstance(n.args[0].value, str)]
    calls.sort(key=lambda n: (n.lineno, n.col_offset))
    return [c.args[0].value for c in calls]  # type: ignore[attr-defined]


def env_names() -> dict[str, list[str]]:
    """Field name -> the environment variables from_env reads for it (first = the field's own)."""
    return {kw.arg: _get_names(kw.value) for kw in _from_env_call().keywords if kw.arg}


def all_env_vars() -> list[str]:
    """Every environment variable from_env reads, in source order."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(Settings.from_env)))
    return list(dict.fromkeys(_get_names(tree)))


def field_comments() -> dict[str, str]:
    """Field name -> its trailing comment, else the comment block right above it (joined)."""
    src = textwrap.dedent(inspect.getsource(Settings))
    lines = src.splitlines()
    comments: dict[int, str] = {}  # line number (1-based) -> comment text
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    cls = ast.parse(src).body[0]
    assert isinstance(cls, ast.ClassDef)
    out: dict[str, str] = {}
    for node in cls.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        end = node.end_lineno or node.lineno
        trailing = [comments[n] for n in range(node.lineno, end + 1) if n in comments]
        if trailing:
            out[node.target.id] = " ".join(trailing)
            continue
        above: list[str] = []
        n = node.lineno - 1
        while n >= 1 and lines[n - 1].strip().startswith("#"):
            above.insert(0, comments[n])
            n -= 1
        if above:
            out[node.target.id] = " ".join(above)
    return out


def _default(value: Any) -> str:
    if isinstance(value, bool):
        return "`1`" if value else "`0`"
    if isinstance(value, float):
        return f"`{int(value)}`" if value.is_integer() else f"`{value!r}`"
    if isinstance(value, str) and not value:
        return '`""`'
    return f"`{value}`"


def rows() -> list[Row]:
    """One row per settable field of Settings, in declaration order."""
    envs, comments, defaults = env_names(), field_comments(), Settings()
    out = []
    for f in dataclasses.fields(Settings):
        if not f.init:  # derived (topics)
            continue
        names = envs.get(f.name, [])
        out.append(Row(field=f.name, env=names[0] if names else "",
                       default=DEFAULTS.get(f.name) or _default(getattr(defaults, f.name)),
                       meaning=DESCRIPTIONS.get(f.name) or comments.get(f.name, "")))
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render() -> str:
    """The markdown between the markers (markers excluded)."""
    lines = ["| variable | default | meaning | `Settings` field |", "|---|---|---|---|"]
    for r in rows():
        env = f"`{r.env}`" if r.env else "(not read from the environment)"
        lines.append(f"| {env} | {_cell(r.default)} | {_cell(r.meaning)} | `{r.field}` |")
    return "\n".join(lines)


def block_of(text: str) -> str:
    """What a README holds between the markers (stripped)."""
    if BEGIN not in text or END not in text:
        raise ValueError(f"README lacks the markers {BEGIN} / {END}")
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n")


def with_block(text: str, block: str) -> str:
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{block}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stream_app.settings_doc", description=__doc__.split("\n")[0])
    ap.add_argument("--readme", type=Path, default=README)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 when the README's table is stale")
    mode.add_argument("--print", action="store_true", help="print the table instead of writing it")
    args = ap.parse_args(argv)
    table = render()
    if args.print:
        print(table)
        return 0
    text = args.readme.read_text()
    current = block_of(text)
    if args.check:
        if current != table:
            print(f"{args.readme}: the settings table is stale; run python -m stream_app.settings_doc")
            return 1
        return 0
    if current != table:
        args.readme.write_text(with_block(text, table))
        print(f"{args.readme}: settings table regenerated")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
