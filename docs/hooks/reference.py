"""mkdocs hook: the reference pages' tables, generated from the code at build time so they cannot drift.

A page asks for a table with a line `<!-- generated: NAME -->`; NAME is one of GENERATORS. The
configuration comes from the pydantic-settings classes (a field without a description fails the
build), the HTTP API from the FastAPI app's OpenAPI document (built without a database), the
database objects from a throwaway embedded PostgreSQL migrated with db/migrations, and the
benchmark table from the latest run in bench/RESULTS.md, the log events from the logging calls in
the packages' source.
"""

from __future__ import annotations

import ast
import enum
import json
import re
import shutil
import tempfile
import types
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page
from pydantic import AliasChoices, SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

ROOT = Path(__file__).resolve().parents[2]
MARKER = re.compile(r"^<!-- generated: ([a-z-]+) -->$", re.MULTILINE)


# --- configuration ---------------------------------------------------------------------------


def _settings_classes() -> list[tuple[str, type[BaseSettings], str]]:
    """(section title, class, who reads it), in the order the page lists them."""
    from db.settings import DatabaseSettings  # noqa: PLC0415  (imported when the page is built)
    from handlers.images import ImageApiSettings  # noqa: PLC0415
    from handlers.llm import LlmSettings  # noqa: PLC0415
    from web.settings import WebSettings  # noqa: PLC0415
    from worker.settings import WorkerSettings  # noqa: PLC0415

    return [
        ("Database", DatabaseSettings, "every command, the worker and the web process"),
        ("Worker", WorkerSettings, "`pgmq-worker run` and `dev`"),
        ("Web process", WebSettings, "`pgmq-worker web` and `dev`"),
        ("Reference pipelines: chat API", LlmSettings, "`handlers/language.py`"),
        ("Reference pipelines: images API", ImageApiSettings, "`handlers/images.py`"),
    ]


def env_names(cls: type[BaseSettings], name: str, field: FieldInfo) -> list[str]:
    """The environment variables that set `field` (its aliases, else the prefix and its name)."""
    alias = field.validation_alias
    if isinstance(alias, str):
        return [alias]
    if isinstance(alias, AliasChoices):
        return [c for c in alias.choices if isinstance(c, str)]
    return [str(cls.model_config.get("env_prefix", "")).upper() + name.upper()]


def type_name(annotation: Any) -> str:
    """A reader's name for a field's type: choices spelled out, durations and secrets named."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        parts = [a for a in typing.get_args(annotation) if a is not type(None)]
        return " or ".join(type_name(a) for a in parts)
    if origin is typing.Literal:
        return " \\| ".join(f"`{v}`" for v in typing.get_args(annotation))
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return " \\| ".join(f"`{m.value}`" for m in annotation)
    names = {timedelta: "duration", SecretStr: "secret", bool: "boolean", int: "integer", float: "number"}
    if annotation in names:
        return names[annotation]
    if isinstance(annotation, type):
        return {"str": "string", "Path": "path"}.get(annotation.__name__, annotation.__name__)
    return str(annotation)


def bounds(field: FieldInfo) -> str:
    """The field's numeric constraints (`ge=1, le=1000` reads as 1-1000)."""
    low = high = None
    for item in field.metadata:
        low = getattr(item, "ge", low)
        high = getattr(item, "le", high)
        if getattr(item, "gt", None) is not None:
            return f" > {item.gt}"
    if low is not None and high is not None:
        return f" ({low}-{high})"
    if low is not None:
        return f" (≥ {low})"
    return ""


def default_text(value: Any) -> str:
    """A default as the environment would spell it."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
        return f"{seconds * 1000:g} ms" if seconds < 1 else f"{seconds:g} s"
    if isinstance(value, enum.Enum):
        return f"`{value.value}`"
    return f"`{value}`"


def configuration() -> str:
    """One table per settings class: variable, type, default, description."""
    out: list[str] = []
    for title, cls, readers in _settings_classes():
        out += [f"## {title}", "", f"`{cls.__module__}.{cls.__name__}`, read by {readers}.", ""]
        out += ["| variable | type | default | description |", "|---|---|---|---|"]
        for name, field in cls.model_fields.items():
            if not field.description:
                raise PluginError(f"{cls.__module__}.{cls.__name__}.{name} has no description")
            variables = " or ".join(f"`{v}`" for v in env_names(cls, name, field))
            kind = type_name(field.annotation) + bounds(field)
            description = " ".join(field.description.split()).replace("|", "\\|")
            out.append(f"| {variables} | {kind} | {default_text(field.default)} | {description} |")
        out.append("")
    return "\n".join(out)


def _cell(text: Any) -> str:
    return " ".join(str(text).split()).replace("|", "\\|") if text is not None else ""


# --- HTTP API --------------------------------------------------------------------------------


@cache
def openapi() -> dict[str, Any]:
    """The web process's OpenAPI document; the app is built without connecting to anything."""
    import handlers  # noqa: F401, PLC0415  (declares the reference queues, as `pgmq-worker web` does)
    from db.connect import Target  # noqa: PLC0415
    from web.app import create_app  # noqa: PLC0415

    app = create_app(Target("postgresql://docs@localhost:1/docs", transaction_pooler=False))
    return app.openapi()


VALIDATION = "#/components/schemas/HTTPValidationError"  # FastAPI's own 422 for path parameters


def schema_name(schema: dict[str, Any]) -> str:
    """A body's schema as a link to its table below (`array of X` for lists)."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[`{name}`](#{name.lower()})"
    if schema.get("type") == "array" and "items" in schema:
        return "array of " + schema_name(schema["items"])
    return str(schema.get("type", ""))


def property_type(prop: dict[str, Any]) -> str:
    """A property's JSON type: its enum, its `anyOf` members, its format."""
    if "enum" in prop:
        return " \\| ".join(f"`{v}`" for v in prop["enum"])
    if "anyOf" in prop:
        return " or ".join(property_type(p) for p in prop["anyOf"])
    if "$ref" in prop or prop.get("type") == "array":
        return schema_name(prop)
    kind = str(prop.get("type", "any JSON"))
    return f"{kind} ({prop['format']})" if "format" in prop else kind


def http_api() -> str:
    """Each operation of the OpenAPI document (parameters, body, answers), then its schemas."""
    document = openapi()
    out: list[str] = []
    for path, operations in document["paths"].items():
        for method, op in operations.items():
            out += [f"### `{method.upper()} {path}`", "", op.get("description") or op.get("summary", ""), ""]
            params = op.get("parameters", [])
            if params:
                out += ["| parameter | in | type | required | description |", "|---|---|---|---|---|"]
                for p in params:
                    kind = p.get("schema", {}).get("type", "")
                    required = "yes" if p.get("required") else "no"
                    text = _cell(p.get("description", ""))
                    out.append(f"| `{p['name']}` | {p['in']} | {kind} | {required} | {text} |")
                out.append("")
            body = op.get("requestBody")
            if body:
                out += [f"Body: {body.get('description', '')}", ""]
            out += ["| status | answer | body |", "|---|---|---|"]
            for code, answer in op.get("responses", {}).items():
                schema = answer.get("content", {}).get("application/json", {}).get("schema", {})
                if schema.get("$ref") == VALIDATION:
                    continue  # our path parameters are strings: the route checks them and answers 404
                named = schema_name(schema) if schema else ""
                out.append(f"| `{code}` | {_cell(answer.get('description', ''))} | {named} |")
            out.append("")
    out += ["## Schemas", ""]
    for name, schema in document.get("components", {}).get("schemas", {}).items():
        if name in ("HTTPValidationError", "ValidationError"):
            continue
        out += [f"### {name}", "", schema.get("description", ""), ""]
        out += ["| field | type | description |", "|---|---|---|"]
        required = set(schema.get("required", []))
        for field, prop in schema.get("properties", {}).items():
            optional = "" if field in required else " (optional)"
            text = _cell(prop.get("description", ""))
            out.append(f"| `{field}` | {property_type(prop)}{optional} | {text} |")
        out.append("")
    return "\n".join(out)


# --- database objects ------------------------------------------------------------------------

TABLES = """
SELECT c.relname, c.relpersistence = 'u', c.relrowsecurity, obj_description(c.oid, 'pg_class')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'pgmq_worker' AND c.relkind = 'r' ORDER BY c.relname
"""
COLUMNS = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(d.adbin, d.adrelid)
FROM pg_attribute a
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = ('pgmq_worker.' || quote_ident(%s))::regclass AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""
INDEXES = (
    "SELECT indexdef FROM pg_indexes WHERE schemaname = 'pgmq_worker' AND tablename = %s ORDER BY indexname"
)
TRIGGERS = """
SELECT pg_get_triggerdef(t.oid) FROM pg_trigger t
WHERE t.tgrelid = ('pgmq_worker.' || quote_ident(%s))::regclass AND NOT t.tgisinternal ORDER BY t.tgname
"""
FUNCTIONS = """
SELECT p.proname, pg_get_function_arguments(p.oid), pg_get_function_result(p.oid), p.prosecdef,
       obj_description(p.oid, 'pg_proc')
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = 'pgmq_worker' ORDER BY p.proname
"""
GRANTS = """
SELECT table_name, grantee, string_agg(privilege_type, ', ' ORDER BY privilege_type)
FROM information_schema.role_table_grants
WHERE table_schema = 'pgmq_worker' AND grantee <> (SELECT tableowner FROM pg_tables
    WHERE schemaname = 'pgmq_worker' AND tablename = table_name)
GROUP BY table_name, grantee ORDER BY table_name, grantee
"""
POLICIES = (
    "SELECT tablename, policyname, cmd, roles::text, qual FROM pg_policies WHERE schemaname = 'pgmq_worker'"
)


@contextmanager
def migrated_database() -> Iterator[Any]:
    """A connection to a throwaway embedded PostgreSQL with pgmq and every migration applied."""
    from db.connect import connect, resolve  # noqa: PLC0415
    from db.embedded import stop_embedded  # noqa: PLC0415
    from db.schema import prepare_schema  # noqa: PLC0415
    from db.settings import DatabaseSettings  # noqa: PLC0415

    data_dir = Path(tempfile.mkdtemp(prefix="pgmq-worker-docs-"))
    try:
        target = resolve(DatabaseSettings(database_url=None, data_dir=data_dir))
        prepare_schema(target)
        with connect(target) as conn:
            yield conn
    finally:
        stop_embedded(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)


@cache
def database() -> str:
    """Tables (columns, indexes, triggers), functions, policies and grants after all migrations."""
    out: list[str] = []
    with migrated_database() as conn:
        tables = conn.execute(TABLES).fetchall()
        out += ["## Tables", ""]
        for name, unlogged, rls, comment in tables:
            flags = ", ".join(f for f, on in (("unlogged", unlogged), ("row-level security", rls)) if on)
            out += [f"### `pgmq_worker.{name}`", "", (comment or "") + (f" ({flags})" if flags else ""), ""]
            out += ["| column | type | null | default |", "|---|---|---|---|"]
            for col, kind, not_null, default in conn.execute(COLUMNS, (name,)).fetchall():
                out.append(f"| `{col}` | {kind} | {'' if not_null else 'yes'} | {_cell(default)} |")
            out.append("")
            extra = [r[0] for r in conn.execute(INDEXES, (name,)).fetchall()]
            extra += [r[0] for r in conn.execute(TRIGGERS, (name,)).fetchall()]
            out += [f"- `{_cell(d)}`" for d in extra] + ([""] if extra else [])
        out += ["## Functions", "", "| function | returns | security | description |", "|---|---|---|---|"]
        for name, args, result, definer, comment in conn.execute(FUNCTIONS).fetchall():
            security = "definer" if definer else "invoker"
            out.append(
                f"| `pgmq_worker.{name}({_cell(args)})` | {_cell(result)} | {security} | {_cell(comment)} |"
            )
        out += ["", "## Policies", ""]
        policies = conn.execute(POLICIES).fetchall()
        out += [f"- `{t}`: `{p}` ({c} for {r}) using `{_cell(q)}`" for t, p, c, r, q in policies] or [
            "None on a plain PostgreSQL (the Supabase ones are below)."
        ]
        out += ["", "## Grants", ""]
        grants = conn.execute(GRANTS).fetchall()
        out += [f"- `{t}` to `{g}`: {p}" for t, g, p in grants] or [
            "None beyond the owner's on a plain PostgreSQL (the Supabase ones are below)."
        ]
    out += ["", "## Migrations", ""]
    for path in sorted((ROOT / "db" / "migrations").glob("*.sql")):
        out += [f"### `{path.name}`", "", _leading_comment(path.read_text()), ""]
    return "\n".join(out)


def _leading_comment(text: str) -> str:
    """The opening `--` comment of a migration, as prose (paragraphs kept)."""
    lines: list[str] = []
    for line in text.splitlines():
        if not line.startswith("--"):
            break
        lines.append(line.removeprefix("--").removeprefix(" "))
    return "\n".join(lines).strip() or "(no description)"


# --- log events ------------------------------------------------------------------------------

LEVELS = ("debug", "info", "warning", "error", "exception", "critical")
EVENT = re.compile(r"^[a-z_]+(\.[a-z_]+)+$")


def log_events() -> str:
    """Every `log.<level>("noun.verb", ...)` call in the packages: the event, its levels, its modules."""
    found: dict[str, tuple[set[str], set[str]]] = {}
    for package in ("worker", "queues", "db", "web", "handlers"):
        for path in sorted((ROOT / package).rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                    continue
                if node.func.attr not in LEVELS or not node.args:
                    continue
                first = node.args[0]
                if (
                    isinstance(first, ast.Constant)
                    and isinstance(first.value, str)
                    and EVENT.match(first.value)
                ):
                    levels, modules = found.setdefault(first.value, (set(), set()))
                    levels.add("error" if node.func.attr == "exception" else node.func.attr)
                    modules.add(module.removesuffix(".__init__"))
    out = ["| event | level | logged by |", "|---|---|---|"]
    for event in sorted(found):
        levels, modules = found[event]
        ordered = [lv for lv in LEVELS if lv in levels]
        out.append(f"| `{event}` | {', '.join(ordered)} | {', '.join(f'`{m}`' for m in sorted(modules))} |")
    return "\n".join(out) + "\n"


# --- benchmarks ------------------------------------------------------------------------------


def benchmarks() -> str:
    """The latest run appended to bench/RESULTS.md (its heading is the run's date)."""
    text = (ROOT / "bench" / "RESULTS.md").read_text()
    runs = re.split(r"^## ", text, flags=re.MULTILINE)
    if len(runs) < 2:
        raise PluginError("bench/RESULTS.md has no run")
    heading, _, body = runs[-1].partition("\n")
    return f"## Latest run: {heading.strip()}\n\n{body.strip()}\n"


GENERATORS: dict[str, Callable[[], str]] = {
    "configuration": configuration,
    "http-api": http_api,
    "database": database,
    "benchmarks": benchmarks,
    "log-events": log_events,
}


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Publish the OpenAPI document beside the HTTP API page."""
    document = json.dumps(openapi(), indent=2)
    files.append(File.generated(config, "reference/openapi.json", content=document))
    return files


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    """Replace each `<!-- generated: NAME -->` line with its table."""

    def generate(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in GENERATORS:
            raise PluginError(f"{page.file.src_uri}: no generator named {name!r}")
        return GENERATORS[name]()

    return MARKER.sub(generate, markdown)
