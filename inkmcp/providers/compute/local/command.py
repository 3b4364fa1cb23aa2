"""A Procfile command as an argv: exec'd directly when a shell would add nothing, else `/bin/sh -c`.

Procfile lines are shell commands (`web: gunicorn -b 0.0.0.0:$PORT app:app`), so they always ran
through `/bin/sh -c`: one more exec, and one more process in the service's tree between InkMCP and
the app (signals reach the app only through the shell's process group). Most lines are a plain
command with words and `$VAR` references, which this module turns into the argv a POSIX shell
would have produced, so the app is exec'd directly.

The direct path is taken only when the result is certain to equal the shell's:
- every character is a word character (letters, digits, `_-./:=,@%+`) or a space, plus `$NAME` /
  `${NAME}` references; no quotes, globs, `~`, redirections, pipes, `;`, `&`, `#`, backslashes,
  newlines or any other syntax;
- every referenced variable is set and its value is made of word characters only (so the shell's
  field splitting and globbing of the unquoted expansion would be no-ops);
- the first word is neither an assignment (`FOO=1 cmd`) nor a shell builtin or keyword; a leading
  `exec` is dropped (it only replaces the shell, which is gone anyway).
Anything else keeps `/bin/sh -c`, exactly as before.
"""

from __future__ import annotations

import re

SHELL = "/bin/sh"
_WORD = r"[A-Za-z0-9_\-./:=,@%+]"
_VAR = r"\$(?:[A-Za-z_][A-Za-z0-9_]*|\{[A-Za-z_][A-Za-z0-9_]*\})"
_PLAIN = re.compile(rf"(?:{_WORD}|{_VAR}| )+")  # fullmatch: `$` would admit a final newline
_REF = re.compile(_VAR)
_SAFE_VALUE = re.compile(rf"{_WORD}+")
# POSIX special builtins, common regular builtins and reserved words: their meaning needs a shell.
_SHELL_WORDS = frozenset({
    ".", ":", "break", "continue", "eval", "export", "readonly", "return", "set", "shift", "times", "trap",
    "unset", "alias", "bg", "cd", "command", "false", "fc", "fg", "getopts", "hash", "jobs", "kill", "read",
    "true", "type", "ulimit", "umask", "unalias", "wait", "source", "local", "if", "then", "else", "elif", "fi",
    "do", "done", "case", "esac", "while", "until", "for", "in", "function", "select", "!", "{", "}", "exit",
})  # fmt: skip


def command_argv(command: str, env: dict[str, str]) -> tuple[str, ...]:
    """The argv that runs `command` (a Procfile line) with `env`: direct when provably equal, else sh -c."""
    direct = direct_argv(command, env)
    return direct if direct is not None else (SHELL, "-c", command)


def direct_argv(command: str, env: dict[str, str]) -> tuple[str, ...] | None:
    """The words a POSIX shell would exec for `command`, or None when only a shell can say."""
    if not _PLAIN.fullmatch(command):
        return None
    for name in _REF.findall(command):
        value = env.get(name.strip("${}"))
        if value is None or not _SAFE_VALUE.fullmatch(value):
            return None
    words = [_REF.sub(lambda m: env[m.group(0).strip("${}")], w) for w in command.split()]
    if words and words[0] == "exec":
        words = words[1:]
    if not words or "=" in words[0] or words[0] in _SHELL_WORDS:
        return None
    return tuple(words)
