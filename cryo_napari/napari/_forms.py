"""magicgui forms generated from a subcommand's argparse parser (the one definition of its options).

:func:`build_form` walks ``parser._actions`` and makes one widget per option:

==============================  ==============================================================
argparse action                 widget
==============================  ==============================================================
path-like (particles, -o, …)    ``FileEdit`` (file or directory mode, empty = unset)
``type=int`` with a default     ``SpinBox`` with that default
``type=float`` with a default   ``FloatSpinBox`` with that default
``choices=[…]``                 ``ComboBox``
``store_true``                  ``CheckBox``
``BooleanOptionalAction``       ``ComboBox`` ("default", "yes", "no")
``nargs`` lists, no default     ``LineEdit`` (space-separated; empty = unset)
sub-commands                    ``ComboBox`` + one sub-form per command (only one shown)
==============================  ==============================================================

:func:`form_to_argv` turns the widget values back into an ``argv`` list and
:func:`parse_form` hands it to the same parser, so defaults and validation are the CLI's.
Options left at their default are not written into ``argv``.
"""

from __future__ import annotations

import argparse
import importlib
import math
from dataclasses import dataclass, field
from pathlib import Path

from magicgui import widgets

#: dest names (or fragments) that hold paths; ``DIR_DESTS`` are directories.
PATH_DESTS = {"particles", "poses", "ctf", "ind", "datadir", "outdir", "load", "run", "map", "mask", "vol",
              "volume", "consensus", "seg", "mesh", "checkpoint", "weights", "z", "labels", "polygon", "out",
              "workdir", "ref", "refs", "half1", "half2"}
DIR_DESTS = {"outdir", "datadir", "run", "workdir", "out"}


class FormError(ValueError):
    """The form's values do not parse (the argparse message, one line)."""


class GuiArgumentParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that raises :class:`FormError` instead of printing and exiting."""

    def error(self, message):  # noqa: D102 - argparse hook
        raise FormError(" ".join(str(message).split()))

    def exit(self, status=0, message=None):  # noqa: D102 - argparse hook (e.g. --help)
        raise FormError(" ".join(str(message or f"exit {status}").split()))


def parser_for(module_name: str) -> GuiArgumentParser:
    """The parser of ``cryo_napari.cli.<module_name>`` (its ``add_args`` on a fresh parser).

    Raises ``ModuleNotFoundError`` when the subcommand is not in this build.
    """
    mod = importlib.import_module(f"cryo_napari.cli.{module_name}")
    parser = GuiArgumentParser(prog=f"cryo-napari {module_name.replace('_', '-')}",
                               description=(mod.__doc__ or "").strip())
    mod.add_args(parser)
    return parser


@dataclass
class Field:
    """One option's widget and how to write it back into ``argv``."""

    action: argparse.Action
    widget: widgets.Widget
    kind: str  # path, int, float, choice, flag, boolopt, list, text


@dataclass
class Form:
    """A generated form: the magicgui container, its fields and sub-forms (per sub-command)."""

    container: widgets.Container
    fields: list = field(default_factory=list)
    sub_action: argparse.Action | None = None
    sub_combo: widgets.ComboBox | None = None
    sub_forms: dict = field(default_factory=dict)

    def field(self, dest: str) -> Field:
        """The field of option ``dest`` (searching the selected sub-form too)."""
        for f in self.fields:
            if f.action.dest == dest:
                return f
        if self.sub_combo is not None:
            return self.sub_forms[self.sub_combo.value].field(dest)
        raise KeyError(dest)

    def set(self, dest: str, value) -> None:
        """Set the widget of option ``dest`` (tests, scripts, the ``gui`` command)."""
        self.field(dest).widget.value = value

    def select(self, command: str) -> None:
        """Choose the sub-command (forms of parsers with sub-commands)."""
        self.sub_combo.value = command


def _label(action: argparse.Action) -> str:
    if action.option_strings:
        longest = max(action.option_strings, key=len)
        return longest.lstrip("-")
    return action.dest


def _is_path(action: argparse.Action) -> bool:
    dest = action.dest.lower()
    if action.type not in (None, str) or action.choices:
        return False
    if dest in PATH_DESTS or dest.endswith(("_path", "_dir", "_file", "dir")):
        return True
    text = (action.help or "").lower()
    return any(w in text for w in (" file", ".mrc", ".star", ".npy", ".pkl", "directory", "path"))


def _widget_for(action: argparse.Action) -> Field:
    """The widget of one argparse action (see the module table)."""
    name, label = action.dest, _label(action)
    tip = (action.help or "").replace("%(default)s", str(action.default))
    common = {"name": name, "label": label, "tooltip": tip}
    if isinstance(action, argparse._StoreTrueAction):
        return Field(action, widgets.CheckBox(value=bool(action.default), **common), "flag")
    if isinstance(action, argparse.BooleanOptionalAction):
        value = {None: "default", True: "yes", False: "no"}.get(action.default, "default")
        return Field(action, widgets.ComboBox(choices=["default", "yes", "no"], value=value, **common), "boolopt")
    if action.choices:
        choices = [str(c) for c in action.choices]
        if action.default is None and action.option_strings:
            choices = [""] + choices
        value = str(action.default) if action.default is not None else choices[0]
        return Field(action, widgets.ComboBox(choices=choices, value=value, **common), "choice")
    if action.nargs not in (None, "?", 1):
        return Field(action, widgets.LineEdit(value=_list_text(action.default), **common), "list")
    if action.type is int and action.default is not None:
        w = widgets.SpinBox(value=int(action.default), min=-(2**31) + 1, max=2**31 - 1, **common)
        return Field(action, w, "int")
    if action.type is float and action.default is not None and math.isfinite(float(action.default)):
        dec = _decimals(float(action.default))
        w = widgets.FloatSpinBox(min=-1e12, max=1e12, step=10 ** -dec, **common)
        if hasattr(w.native, "setDecimals"):
            w.native.setDecimals(dec)
        w.value = float(action.default)
        return Field(action, w, "float")
    if _is_path(action):
        mode = "d" if action.dest.lower() in DIR_DESTS or "directory" in (action.help or "").lower() else "r"
        if action.dest.lower() in DIR_DESTS:
            mode = "d"
        w = widgets.FileEdit(mode=mode, nullable=True, **common)
        if action.default is not None:
            w.value = Path(str(action.default))
        return Field(action, w, "path")
    default = "" if action.default is None or action.default is argparse.SUPPRESS else str(action.default)
    return Field(action, widgets.LineEdit(value=default, **common), "text")


def _decimals(x: float) -> int:
    """Enough decimals to show ``x`` exactly-ish in a spin box (2–8)."""
    if x == 0:
        return 3
    return int(min(8, max(2, -math.floor(math.log10(abs(x))) + 2)))


def _list_text(default) -> str:
    if default is None or default is argparse.SUPPRESS:
        return ""
    if isinstance(default, (list, tuple)):
        return " ".join(str(v) for v in default)
    return str(default)


def build_form(parser: argparse.ArgumentParser) -> Form:
    """A magicgui form for every option of ``parser`` (help/version skipped).

    Returns
    -------
    Form
        ``form.container`` is the widget to put in a dock.
    """
    form = Form(container=widgets.Container(labels=True))
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction)) or action.dest == argparse.SUPPRESS:
            continue
        if isinstance(action, argparse._SubParsersAction):
            names = list(action.choices)
            form.sub_action = action
            form.sub_combo = widgets.ComboBox(choices=names, value=names[0], name=action.dest or "command",
                                              label=action.dest or "command")
            form.container.append(form.sub_combo)
            for cmd, sub in action.choices.items():
                subform = build_form(sub)
                subform.container.visible = cmd == names[0]
                form.sub_forms[cmd] = subform
                form.container.append(subform.container)
            form.sub_combo.changed.connect(lambda v, f=form: _show_sub(f, v))
            continue
        f = _widget_for(action)
        form.fields.append(f)
        form.container.append(f.widget)
    return form


def _show_sub(form: Form, cmd: str) -> None:
    for name, sub in form.sub_forms.items():
        sub.container.visible = name == cmd


def _field_argv(f: Field) -> list[str]:
    """``argv`` words for one field ([] when the option is left at its default/unset)."""
    a, v = f.action, f.widget.value
    flag = max(a.option_strings, key=len) if a.option_strings else None
    if f.kind == "flag":
        return [flag] if bool(v) != bool(a.default) else []
    if f.kind == "boolopt":
        if v == "default":
            return []
        pos = [s for s in a.option_strings if not s.startswith("--no-")]
        neg = [s for s in a.option_strings if s.startswith("--no-")]
        return [pos[0]] if v == "yes" else [neg[0]]
    if f.kind == "path":
        words = [] if v is None or str(v) in ("", ".") else [str(v)]
    elif f.kind == "list":
        words = str(v).split()
    elif f.kind == "int":
        words = [] if (flag and int(v) == a.default) else [str(int(v))]
    elif f.kind == "float":
        words = [] if (flag and math.isclose(float(v), float(a.default), rel_tol=1e-9, abs_tol=1e-12)) else [repr(float(v))]
    else:  # text, choice
        words = [] if str(v) == "" or (flag and a.default is not None and str(v) == str(a.default)) else [str(v)]
    if not words:
        return []
    return [flag, *words] if flag else words


def form_to_argv(form: Form) -> list[str]:
    """The command line (without the program and subcommand name) the form's values spell."""
    argv: list[str] = []
    positionals: list[str] = []
    for f in form.fields:
        words = _field_argv(f)
        (argv if f.action.option_strings else positionals).extend(words)
    argv = positionals + argv
    if form.sub_combo is not None:
        cmd = form.sub_combo.value
        argv += [cmd, *form_to_argv(form.sub_forms[cmd])]
    return argv


def parse_form(form: Form, parser: argparse.ArgumentParser) -> argparse.Namespace:
    """The ``Namespace`` the CLI would get for the form's values.

    Raises
    ------
    FormError
        A required option is empty or a value does not parse (argparse's message).
    """
    return parser.parse_args(form_to_argv(form))
