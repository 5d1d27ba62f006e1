"""The core names no provider: every provider-specific fact lives behind the Provider /
ProviderClient contract, in the plugins. This test reads every module of `imagerouter/` and
fails on a string literal or an identifier that names a shipped provider plugin.

Docstrings and comments may name providers (they explain where a rule comes from); the
shipped default tiers are data (defaults.yaml), not code, so they are not read here. `openai`
is not checked: the gateway speaks OpenAI's Images API (`openai_shapes`), which is a wire
format, not the provider plugin.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "imagerouter"
# Python 3.12 splits f-strings into parts; 3.11 keeps each one a STRING token.
_FSTRING_PART = getattr(tokenize, "FSTRING_MIDDLE", tokenize.STRING)
_TEXT_TOKENS = {tokenize.NAME, tokenize.STRING, _FSTRING_PART}
PROVIDER_NAMES = re.compile(r"run[\s_-]?api|run[\s_-]?flow", re.IGNORECASE)


def _docstring_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        # Module, class and function docstrings, and a bare string statement after an
        # assignment (an attribute's docs): every string that is a statement of its own.
        if (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            lines.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    return lines


def offenders(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    docs = _docstring_lines(ast.parse(text))
    found = []
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type not in _TEXT_TOKENS:
            continue
        if token.start[0] in docs:
            continue
        if PROVIDER_NAMES.search(token.string):
            found.append(f"{path.relative_to(CORE.parent)}:{token.start[0]}: {token.string}")
    return found


def test_the_core_names_no_provider() -> None:
    found = [hit for path in sorted(CORE.rglob("*.py")) for hit in offenders(path)]
    assert not found, "the core names a provider:\n" + "\n".join(found)


def test_the_check_sees_strings_and_identifiers(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        '"""Runflow is fine in a docstring."""\n'
        "# and RunAPI in a comment\n"
        'X = {"runapi": 1}\n'
        "runflow_floor = 0.5\n",
        encoding="utf-8",
    )
    global CORE
    saved, CORE = CORE, tmp_path
    try:
        hits = offenders(sample)
    finally:
        CORE = saved
    assert [hit.split(": ", 1)[1] for hit in hits] == ['"runapi"', "runflow_floor"]
