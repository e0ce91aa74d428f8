"""`mmgw completion bash|zsh`: a completion script made from the CLI's own parser, so it
offers exactly the commands, resources and flags `mmgw` takes.

    source <(mmgw completion bash)                       # bash
    autoload -U +X bashcompinit && bashcompinit          # zsh, then:
    source <(mmgw completion zsh)
"""

from __future__ import annotations

import argparse
import shlex

SHELLS = ("bash", "zsh")


def cmd_completion(args: argparse.Namespace, top: argparse.ArgumentParser) -> int:
    print(script(top, zsh=args.shell == "zsh"))
    return 0


def _subcommands(top: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in top._actions:  # noqa: SLF001 - argparse keeps its subparsers only here
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            return dict(action.choices)
    return {}


def _words(command: argparse.ArgumentParser) -> tuple[list[str], list[str]]:
    """(its flags, the choices of its first positional that has them)."""
    flags: list[str] = []
    choices: list[str] = []
    for action in command._actions:  # noqa: SLF001
        if action.option_strings:
            flags += [o for o in action.option_strings if o.startswith("--")]
        elif action.choices and not choices:
            choices = [str(c) for c in action.choices]
    return flags, choices


def script(top: argparse.ArgumentParser, *, zsh: bool = False) -> str:
    commands = _subcommands(top)
    cases = []
    for name, command in commands.items():
        flags, choices = _words(command)
        cases.append(f"    {name}) words={shlex.quote(' '.join(choices + flags))} ;;")
    head = "#compdef mmgw\n" if zsh else ""
    return (
        f"{head}# mmgw completion ({'zsh, through bashcompinit' if zsh else 'bash'}): "
        "source this file\n"
        "_mmgw() {\n"
        '  local cur="${COMP_WORDS[COMP_CWORD]}" words\n'
        '  if [ "$COMP_CWORD" -eq 1 ]; then\n'
        f"    words={shlex.quote(' '.join([*commands, '--version', '--help']))}\n"
        "  else\n"
        '  case "${COMP_WORDS[1]}" in\n' + "\n".join(cases) + "\n    *) words= ;;\n  esac\n  fi\n"
        '  COMPREPLY=($(compgen -W "$words" -- "$cur"))\n'
        "}\n"
        "complete -o default -F _mmgw mmgw"
    )
