"""MkDocs hook: the API and CLI reference pages, generated at build time.

- API: every public module of the ``locoedit`` package, found by walking the package's folders with ``pkgutil``
  (nothing is imported; mkdocstrings reads the sources statically with griffe). ``locoedit.testing`` and private
  modules (a name part starting with ``_``) are left out. One page per module, grouped by subpackage in the nav
  under the entry that points at ``reference/api/index.md``.
- CLI: ``typer.main.get_command(locoedit.cli.app)`` walked recursively: every command and group with its usage,
  help and every parameter (name, flags, type, default, help) on ``reference/cli.md``.
- Home: ``index.md`` is the README with its links into ``docs/`` made relative to the site, so the two never drift
  apart; the generated references are linked at its end.

Module and command names are never written down here, so the pages follow the code as it is renamed.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pkgutil
import re
import sys
from pathlib import Path

from mkdocs.structure.files import File

PACKAGE = "locoedit"
SKIP = ("locoedit.testing",)
API_DIR = "reference/api"
API_INDEX = f"{API_DIR}/index.md"
CLI_PAGE = "reference/cli.md"


def _use_this_checkout(config) -> None:
    """Import the package from the repository that holds mkdocs.yml, not from wherever it is installed."""
    root = str(Path(config.config_file_path).resolve().parent)
    if sys.path[0] != root:
        sys.path.insert(0, root)


# ---------------------------------------------------------------------------------------------------------- API
def public_modules(package: str = PACKAGE) -> list[str]:
    """Dotted names of the package and its public modules, depth first, without importing any of them."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"{package} is not an importable package")
    found = [package]

    def walk(paths, prefix):
        for info in sorted(pkgutil.iter_modules(paths), key=lambda m: m.name):
            name = prefix + info.name
            if info.name.startswith("_") or name in SKIP or name.startswith(tuple(s + "." for s in SKIP)):
                continue
            found.append(name)
            if info.ispkg:
                walk([str(Path(info.module_finder.path) / info.name)], name + ".")

    walk(list(spec.submodule_search_locations), package + ".")
    return found


def _api_page(module: str) -> str:
    return f"# `{module}`\n\n::: {module}\n"


def _api_index(modules: list[str]) -> str:
    lines = [
        "# API reference",
        "",
        "Generated at build time from the docstrings of every public module of the package (found by walking it;",
        "`locoedit.testing` and private modules are left out). Signatures and docstrings are read from the",
        "source by [griffe](https://mkdocstrings.github.io/griffe/), without importing the package.",
        "",
        "| module | summary |",
        "|---|---|",
    ]
    for module in modules:
        lines.append(f"| [`{module}`]({_api_uri(module).removeprefix(API_DIR + '/')}) | {_summary(module)} |")
    return "\n".join(lines) + "\n"


def _summary(module: str) -> str:
    """The first line of a module's docstring, read from the source without importing it."""
    import ast

    path = _module_path(module)
    try:
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    except (OSError, SyntaxError):
        return ""
    first = doc.strip().split("\n\n", 1)[0].replace("\n", " ").replace("|", "\\|")
    return first


def _module_path(module: str) -> Path:
    root = Path(importlib.util.find_spec(PACKAGE).submodule_search_locations[0])
    parts = module.split(".")[1:]
    folder = root.joinpath(*parts)
    return folder / "__init__.py" if folder.is_dir() else folder.with_suffix(".py")


def _api_uri(module: str) -> str:
    return f"{API_DIR}/{module}.md"


def _api_nav(modules: list[str]) -> list:
    """Nav entries: the index, the package page, then one section per subpackage (or a page per module)."""
    groups: dict[str, list[str]] = {}
    for module in modules[1:]:
        groups.setdefault(".".join(module.split(".")[:2]), []).append(module)
    nav: list = [{"Overview": API_INDEX}, {modules[0]: _api_uri(modules[0])}]
    for head, members in groups.items():
        if len(members) == 1:
            nav.append({head: _api_uri(head)})
        else:
            nav.append({head: [{m: _api_uri(m)} for m in members]})
    return nav


def _replace_nav_entry(nav, target: str, replacement) -> bool:
    """Swap the nav entry whose page is ``target`` for a section, wherever it sits."""
    for i, item in enumerate(nav or []):
        if isinstance(item, dict):
            for title, value in item.items():
                if value == target:
                    nav[i] = {title: replacement}
                    return True
                if isinstance(value, list) and _replace_nav_entry(value, target, replacement):
                    return True
        elif item == target:
            nav[i] = {"API reference": replacement}
            return True
    return False


# ---------------------------------------------------------------------------------------------------------- CLI
def _type_of(param, ctx) -> str:
    display = getattr(param, "display_type", None)  # typer >= 0.2x (its own click)
    if callable(display):
        text = display(ctx)
    else:  # classic click
        text = getattr(param.type, "name", str(param.type))
    return str(text).strip("<>")


def _default_of(param) -> str:
    if getattr(param, "required", False):
        return "required"
    default = param.default
    if callable(default):
        return "(computed)"
    if default is None or default == () or default == []:
        return ""
    if default == "":
        return '`""`'
    if isinstance(default, bool) and getattr(param, "secondary_opts", None):
        return _code((param.opts if default else param.secondary_opts)[0])
    return _code(default)


def _flags_of(param) -> str:
    if getattr(param, "param_type_name", "") == "argument":
        return f"`{param.name.upper()}` (argument)"
    flags = [*param.opts, *getattr(param, "secondary_opts", [])]
    return ", ".join(f"`{f}`" for f in flags)


def _code(text: str) -> str:
    """Inline code in a table cell: a pipe cannot be escaped inside a code span, so alternatives are split."""
    return " \\| ".join(f"`{part}`" for part in str(text).split("|"))


def _cell(text: str) -> str:
    return " ".join(str(text or "").split()).replace("|", "\\|")


def _command_docs(command, path: list[str], ctx, out: list[str]) -> list[str]:
    """Append the section of ``command`` (and its subcommands) to ``out``; return every command path found."""
    found = [" ".join(path)]
    depth = min(len(path) + 1, 6)
    out.append(f"{'#' * depth} `{' '.join(path)}`\n")
    help_text = inspect.cleandoc(command.help or "")
    if help_text:
        out.append(help_text + "\n")
    pieces = " ".join(command.collect_usage_pieces(ctx)) if hasattr(command, "collect_usage_pieces") else ""
    out.append(f"```\n{' '.join(path)} {pieces}\n```\n")
    params = [p for p in command.params if not getattr(p, "hidden", False)]
    if params:
        out.append("| name | flags | type | default | help |")
        out.append("|---|---|---|---|---|")
        for p in params:
            help_text = _cell(getattr(p, "help", ""))
            if getattr(p, "multiple", False) and "repeat" not in help_text.lower():
                help_text = (help_text + " (repeatable)").strip()
            row = [f"`{p.name}`", _flags_of(p), _code(_type_of(p, ctx)), _default_of(p), help_text]
            out.append("| " + " | ".join(row) + " |")
        out.append("")
    subcommands = getattr(command, "commands", None)
    if subcommands:
        names = command.list_commands(ctx) if hasattr(command, "list_commands") else list(subcommands)
        out.append("Commands: " + ", ".join(f"`{n}`" for n in names) + "\n")
        for name in names:
            sub = command.get_command(ctx, name) if hasattr(command, "get_command") else subcommands[name]
            if sub is None or getattr(sub, "hidden", False):
                continue
            sub_ctx = type(ctx)(sub, info_name=name, parent=ctx)
            found += _command_docs(sub, [*path, name], sub_ctx, out)
    return found


def cli_reference() -> tuple[str, list[str]]:
    """The CLI reference page in Markdown, and every command path it documents."""
    import typer

    cli = importlib.import_module(f"{PACKAGE}.cli")
    command = typer.main.get_command(cli.app)
    ctx_class = getattr(command, "context_class", None)
    ctx = ctx_class(command, info_name=PACKAGE)
    out = [
        "# CLI reference",
        "",
        "Generated at build time from the typer app (`typer.main.get_command(locoedit.cli.app)`): every command,",
        "its usage and every parameter. `locoedit COMMAND --help` prints the same on the terminal.",
        "",
    ]
    body: list[str] = []
    found = _command_docs(command, [PACKAGE], ctx, body)
    out.append("Commands: " + ", ".join(f"`{c}`" for c in found[1:]) + "\n")
    return "\n".join(out + body) + "\n", found


# --------------------------------------------------------------------------------------------------------- home
def home_page(readme: str) -> str:
    """The README as the site's home page: ``](docs/x.md)`` becomes ``](x.md)``; links to the references added."""
    text = re.sub(r"\]\(docs/", "](", readme)
    return (
        text.rstrip()
        + f"\n\nGenerated from the code at build time: the [CLI reference]({CLI_PAGE}) and the [API reference]({API_INDEX}).\n"
    )


# --------------------------------------------------------------------------------------------------------- hook
def on_files(files, config):
    _use_this_checkout(config)
    modules = public_modules()
    readme = Path(config.config_file_path).resolve().parent / "README.md"
    generated = {"index.md": home_page(readme.read_text(encoding="utf-8"))}
    generated.update({_api_uri(m): _api_page(m) for m in modules})
    generated[API_INDEX] = _api_index(modules)
    generated[CLI_PAGE] = cli_reference()[0]
    for uri, content in generated.items():
        existing = files.get_file_from_path(uri)
        if existing is not None:
            files.remove(existing)
        files.append(File.generated(config, uri, content=content))
    _replace_nav_entry(config.nav, API_INDEX, _api_nav(modules))
    return files
