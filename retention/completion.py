"""Shell completion scripts (`retention completion bash|zsh`), made from the parser itself so
that they never fall behind the commands and options."""

from __future__ import annotations

import argparse
import shlex

_FILE_OPTIONS = {"--config", "-c", "--inventory", "--base", "--save"}


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse offers no public walk of its subcommands
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _words(parser: argparse.ArgumentParser) -> tuple[list[str], dict[str, list[str]]]:
    """Each option string, and the values of those that take a fixed set (and of
    positionals, under "")."""
    options: list[str] = []
    values: dict[str, list[str]] = {}
    for action in parser._actions:
        if action.option_strings:
            options.extend(action.option_strings)
            for name in action.option_strings:
                if action.choices:
                    values[name] = [str(c) for c in action.choices]
        elif action.choices and not isinstance(action, argparse._SubParsersAction):
            values[""] = [str(c) for c in action.choices]
    return options, values


def _bash(parser: argparse.ArgumentParser) -> str:
    commands = _commands(parser)
    lines = [
        "# bash completion for retention: source <(retention completion bash)",
        "_retention() {",
        '    local cur prev cmd i',
        '    cur="${COMP_WORDS[COMP_CWORD]}"',
        '    prev="${COMP_WORDS[COMP_CWORD-1]}"',
        '    cmd=""',
        '    for ((i = 1; i < COMP_CWORD; i++)); do',
        '        case "${COMP_WORDS[i]}" in -*) ;; *) cmd="${COMP_WORDS[i]}"; break;; esac',
        "    done",
        '    case "$cmd" in',
        f'        "") COMPREPLY=($(compgen -W {shlex.quote(" ".join(commands))} -- "$cur"))'
        "; return;;",
    ]
    for name, sub in commands.items():
        options, values = _words(sub)
        lines.append(f"        {shlex.quote(name)})")
        lines.append('            case "$prev" in')
        for option, choices in values.items():
            if option:
                lines.append(f"                {option}) COMPREPLY=($(compgen -W "
                             f'{shlex.quote(" ".join(choices))} -- "$cur")); return;;')
        files = "|".join(o for o in options if o in _FILE_OPTIONS)
        if files:
            lines.append(f'                {files}) COMPREPLY=($(compgen -f -- "$cur")); '
                         "return;;")
        lines.append("            esac")
        words = " ".join([*options, *values.get("", [])])
        lines.append(f'            COMPREPLY=($(compgen -W {shlex.quote(words)} -- "$cur"));;')
    lines += ["    esac", "}", "complete -o default -F _retention retention", ""]
    return "\n".join(lines)


def _zsh(parser: argparse.ArgumentParser) -> str:
    # zsh reads bash's completion functions through bashcompinit (as kubectl's and
    # terraform's zsh set-ups do): one script to keep right, not two.
    return ("#compdef retention\n"
            "# zsh completion for retention: source <(retention completion zsh)\n"
            "autoload -U +X bashcompinit && bashcompinit\n" + _bash(parser))


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    return _zsh(parser) if shell == "zsh" else _bash(parser)
