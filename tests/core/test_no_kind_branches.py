"""Guard: outside genalign/models/, nothing branches on a model's noise-law kind ("flow" / "vp" / "edm").

Code outside the model adapters asks ``Generator.law`` (genalign/models/laws.py) instead, so a family with another
parameterisation is one new law class. Comments and docstrings are ignored; other things called "kind" (a
registry's kind, an exemplar set's reference kind, a GUI element's kind, ``inspect.Parameter.kind``, DRAGON's
``_contribution_kind``) are not noise-law kinds and must not trip the check.
"""

from __future__ import annotations

import io
import pathlib
import re
import tokenize

import genalign

ROOT = pathlib.Path(genalign.__file__).parent

# files allowed to keep a match, with the reason
ALLOWED: dict = {}

LAW_NAMES = r"(?:flow|vp|edm|eps|epsilon)"
PATTERNS = [
    # a generator / family / law object's .kind attribute (gen.kind, ctx.generator.kind, fam.kind, self.generator.kind)
    re.compile(r"\b(?:gen|generator|g|fam|family|model|law|cls|adapter)\.kind\b"),
    re.compile(r"\bgetattr\(\s*\w+\s*,\s*[\"']kind[\"']"),
    # any comparison of something called kind with a law name, either way round
    re.compile(r"\bkind\s*[=!]=\s*[\"']" + LAW_NAMES + r"[\"']"),
    re.compile(r"[\"']" + LAW_NAMES + r"[\"']\s*[=!]=\s*[\w.]*kind\b"),
    re.compile(r"\bkind\s+(?:not\s+)?in\s*[\(\[\{]\s*[\"']" + LAW_NAMES + r"[\"']"),
]


def code_without_comments_and_docstrings(src: str) -> str:
    """The source with comments and docstrings (string statements) blanked out; other strings are kept."""
    lines = src.splitlines(keepends=True)
    spans, prev, depth = [], tokenize.NEWLINE, 0
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        starts_statement = prev in (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT) or (
            prev == tokenize.NL and depth == 0)
        if tok.type == tokenize.COMMENT or (tok.type == tokenize.STRING and starts_statement):
            spans.append((tok.start, tok.end))
        if tok.type == tokenize.OP and tok.string in "([{":
            depth += 1
        elif tok.type == tokenize.OP and tok.string in ")]}":
            depth -= 1
        if tok.type != tokenize.COMMENT:
            prev = tok.type
    for (r0, c0), (r1, c1) in reversed(spans):
        for r in range(r0, r1 + 1):
            line = lines[r - 1]
            lo = c0 if r == r0 else 0
            hi = c1 if r == r1 else len(line.rstrip("\n"))
            lines[r - 1] = line[:lo] + " " * (hi - lo) + line[hi:]
    return "".join(lines)


def offending_lines(src: str):
    code = code_without_comments_and_docstrings(src)
    return [line.strip() for line in code.splitlines() if any(p.search(line) for p in PATTERNS)]


def test_detector_catches_law_branches_and_ignores_other_kinds():
    bad = [
        'if gen.kind == "flow":\n    pass\n',
        'x = 1 if ctx.generator.kind != "vp" else 2\n',
        'k = getattr(fam, "kind", "")\n',
        'if "edm" == self.generator.kind:\n    pass\n',
        'if kind == "vp":\n    pass\n',
        'ok = kind in ("flow", "edm")\n',
        'raise E("a "\n      f"({fam.kind}) b")\n',  # a string continuing a call is code, not a docstring
    ]
    for src in bad:
        assert offending_lines(src), src
    good = [
        'if self._contribution_kind(r) == "loo":\n    pass\n',
        'if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in ps):\n    pass\n',
        'if kind == "loo" or kind == "images":\n    pass\n',
        'self.kind = kind\n',
        '# if gen.kind == "flow": an old comment\nx = 1\n',
        'def f():\n    """Formerly: if gen.kind == "flow"."""\n    return gen.law.step_dt(s, j)\n',
        'msg = f"unknown {self.kind} {name}"\n',
    ]
    for src in good:
        assert not offending_lines(src), src


def test_no_noise_law_kind_branches_outside_models():
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("models/") or rel in ALLOWED:
            continue
        lines = offending_lines(path.read_text(encoding="utf-8"))
        if lines:
            found[rel] = lines
    assert not found, ("branch on the model's noise law through Generator.law (genalign/models/laws.py), not on "
                       f"its kind: {found}")
    for rel in ALLOWED:
        assert (ROOT / rel).exists(), f"stale allow-list entry {rel}"
