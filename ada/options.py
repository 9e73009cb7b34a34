"""The options of `ada train`, derived from the field declarations in `ada.config`.

Each config field with a flag becomes one click option: its type from the field's type, its
choices and help text from its `Option`, and "[default: from preset]" where a preset or the auto
rules decide the value. Every option defaults to None, which means "not given": the preset then
decides. `--set KEY=VALUE` reaches every settable field, typed like the field, and
`--help-config` lists them with the values the chosen preset gives them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from ada import config, field_types
from ada.config import Setting
from ada.errors import UserError


def _param_name(setting: Setting) -> str:
    return setting.key.replace(".", "__")


class _FieldText(click.ParamType):
    """A field whose command-line text is parsed as `--set` parses it (a list from 'a,b' or 'none')."""

    name = "text"

    def __init__(self, setting: Setting):
        self.setting = setting

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return field_types.parse_text(self.setting, value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def _click_type(setting: Setting) -> click.ParamType:
    if setting.option.choices is not None:
        return click.Choice(setting.option.choices)
    kinds = [t for t in field_types.alternatives(setting.type) if t is not type(None)]
    simple = {bool: click.BOOL, int: click.INT, float: click.FLOAT, str: click.STRING}
    return simple.get(kinds[0]) or _FieldText(setting)


def show_value(value: Any) -> str:
    """A config value as help and --help-config show it."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ",".join(value) if value else "none"
    if value is None:
        return "null"
    return str(value)


def _help_values() -> dict[str, str]:
    from ada import builtin

    return {"builtins": ", ".join(builtin.NAMES), "presets": ", ".join(config.available_presets())}


def help_text(setting: Setting, values: dict[str, str]) -> str:
    option = setting.option
    if setting.key in config.preset_decided():
        default = "from preset"
    else:
        default = option.default_text or show_value(setting.default)
    return f"{option.help.format(**values)} [default: {default}]"


def flag_settings() -> list[Setting]:
    """The settings that have a flag: the official ones first, then ours, each in declaration order."""
    with_flag = [s for s in config.settings().values() if s.option.flag]
    return [s for s in with_flag if s.option.official] + [s for s in with_flag if not s.option.official]


def train_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate the train command with one click option per flag, and -n, --set, --help-config."""
    values = _help_values()
    declared = [
        click.option(
            s.option.flag, _param_name(s), type=_click_type(s), default=None, help=help_text(s, values),
            metavar=s.option.metavar or ("BOOL" if bool in field_types.alternatives(s.type) else None),
        )
        for s in flag_settings()
    ]
    extra = [
        click.option("-n", "--dry-run", is_flag=True,
                     help="Check everything a start checks, build the networks, print the resolved options; "
                     "write nothing"),
        click.option("--set", "set_values", multiple=True, metavar="KEY=VALUE",
                     help="Set any config field, e.g. --set loss.pl_weight=0 --set optim.lr=0.002 (repeatable; "
                     "see --help-config)"),
        click.option("--help-config", is_flag=True,
                     help="List every config field with its type, meaning and the value under --cfg, and exit"),
    ]
    # click shows options in the order of the decorators, outermost first.
    for decorator in reversed(declared + extra):
        command = decorator(command)
    return command


def parse_set(items: tuple[str, ...]) -> dict[str, Any]:
    """`--set KEY=VALUE` items as {dotted key: typed value}; UserError naming the bad one."""
    known = config.settings()
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep:
            raise UserError(f"--set {item}: write KEY=VALUE, e.g. --set loss.pl_weight=0")
        setting = known.get(key)
        if setting is None or not setting.option.settable:
            hint = "choose the preset with --cfg" if setting is not None else "see `ada train --help-config`"
            raise UserError(f"--set {item}: {key!r} is not a config field you can set; {hint}")
        if key in out:
            raise UserError(f"--set {key} is given twice; give it once")
        try:
            out[key] = field_types.parse_text(setting, text)
        except ValueError as exc:
            raise UserError(f"--set {item}: {exc}") from None
    return out


def overrides(flags: dict[str, Any], set_items: tuple[str, ...]) -> dict[str, Any]:
    """The options the user gave (flags and --set), nested like the config. A field given both ways is refused."""
    flat: dict[str, Any] = {}
    by_param = {_param_name(s): s for s in flag_settings()}
    for param, value in flags.items():
        if value is None:
            continue
        flat[by_param[param].key] = value
    for key, value in parse_set(set_items).items():
        if key in flat:
            raise UserError(f"--set {key} and {config.settings()[key].option.flag} both set {key}; give one")
        flat[key] = value
    return config.nest(flat)


def help_config(cfg: config.TrainConfig) -> str:
    """Every config field: key, type, value in `cfg` (a preset before the data and the flags), flag and meaning."""
    values = _help_values()
    rows = []
    for setting in config.settings().values():
        option = setting.option
        how = option.flag or ("--set" if option.settable else "")
        rows.append((setting.key, field_types.type_words(setting.type), show_value(config.get(cfg, setting.key)), how,
                     option.help.format(**values)))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [
        f"Config fields and their values under --cfg={cfg.cfg}"
        + (" (before the auto rules, which follow from the data)" if cfg.auto_rules else "") + ".",
        "Set any of them with --set KEY=VALUE (null for none; booleans 1/0), or in a YAML file given to --cfg.",
        "",
    ]
    for row in rows:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)) + "  " + row[4])
    return "\n".join(lines)
