"""A large, varied text corpus assembled from what is installed, for tokenizer equality tests.

Sources, in order (each deterministic for a given machine):
- gettext catalogues (``*.mo`` under ``/usr/share/locale``): human translations in many
  languages and scripts;
- licence texts shipped with installed Python packages and the system;
- package metadata (summaries and descriptions) of installed distributions;
- docstrings of the Python standard library and installed packages;
- hand-written Unicode edge cases: combining marks, CJK, RTL, emoji with modifiers,
  zero-width characters, invalid UTF-8, a 10,000-character string, empty and whitespace-only
  strings, control characters.

Every item is ``bytes`` (so invalid UTF-8 can be part of it).
"""

from __future__ import annotations

import ast
import gettext
import glob
import importlib.metadata
import os
import sys
import sysconfig

MAX_CHARS = 2000  # longer texts are cut into pieces of at most this many characters


def _pieces(text: str) -> list:
    text = text.strip("\n")
    return [text[i:i + MAX_CHARS] for i in range(0, len(text), MAX_CHARS)] if text else []


def gettext_strings(limit: int, per_catalogue: int = 25) -> list:
    out = []
    for path in sorted(glob.glob("/usr/share/locale/*/LC_MESSAGES/*.mo")):  # ~200 languages
        try:
            with open(path, "rb") as f:
                catalog = gettext.GNUTranslations(f)
        except Exception:  # a catalogue in an encoding or format gettext does not read
            continue
        values = [v for _, v in sorted(catalog._catalog.items(), key=lambda kv: str(kv[0]))
                  if isinstance(v, str) and v.strip()]
        out += values[:per_catalogue]
        if len(out) >= limit:
            break
    return out[:limit]


def licence_strings(limit: int) -> list:
    paths = sorted(glob.glob(os.path.join(sysconfig.get_paths()["purelib"], "*.dist-info", "LICEN[CS]E*")))
    paths += sorted(glob.glob("/usr/share/common-licenses/*"))
    out = []
    for path in paths:
        if os.path.isfile(path):
            with open(path, encoding="utf-8", errors="replace") as f:
                out += [p for p in f.read().split("\n\n") if p.strip()]
        if len(out) >= limit:
            break
    return out[:limit]


def metadata_strings(limit: int) -> list:
    out = []
    for dist in sorted(importlib.metadata.distributions(), key=lambda d: d.metadata["Name"] or ""):
        for key in ("Summary", "Description"):
            value = dist.metadata.get(key)
            if value:
                out += _pieces(value)
    return out[:limit]


def docstring_strings():
    """Docstrings of the standard library, then of installed packages (a generator: take what
    you need)."""
    stdlib, packages = sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"]
    paths = [p for p in sorted(glob.glob(os.path.join(stdlib, "**", "*.py"), recursive=True))
             if "site-packages" not in p]
    paths += sorted(glob.glob(os.path.join(packages, "*", "**", "*.py"), recursive=True))
    for path in paths:
        if "test" in os.path.relpath(path, stdlib):
            continue
        try:
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read())
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node, clean=False)
                if doc:
                    yield from _pieces(doc)


def edge_cases() -> list:
    """Hand-written strings that exercise every step of BERT tokenization."""
    text = [
        "", " ", "   \t\n  ", "\u00a0\u2003\u3000", "\u200b", "a\u200bb", "zero\u200dwidth\u200cjoiners",
        "\ufeffbom at start", "soft\u00adhyphen", "e\u0301cole", "\u00e9cole", "E\u0301COLE", "A\u030a\u0301",
        "a\u0323\u0302", "o\u0308\u0304", "Ångström", "naïve café résumé", "Straße STRASSE ß", "ǅ ǆ Ǆ", "ﬁnance ﬂow",
        "İstanbul ıi", "ΣΊΣΥΦΟΣ σίσυφος ς", "Ⅻ ⅻ ① ⑽ ㈱ ㍿", "ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３", "ｶﾀｶﾅ ｱｲｳ",
        "中文字符测试", "漢字とひらがなとカタカナ", "한국어 텍스트 처리", "\u1100\u1161\u11a8 \u1112\u1161\u11ab",
        "𠀀𠀁 𪜀 丽", "עברית מימין לשמאל", "العربية من اليمين إلى اليسار", "\u202eright-to-left override\u202c",
        "\u0645\u064e\u0631\u0652\u062d\u064e\u0628\u064b\u0627", "हिन्दी पाठ", "தமிழ் \u0bc6\u0bbe \u0bca", "ภาษาไทย",
        "Ελληνικά", "Русский ТЕКСТ ёЁ", "Ქართული", "👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 ❤️", "emoji🙂inside", "🇫🇷🇯🇵",
        "\x00", "a\x00b", "\x01\x02\x1f\x7f", "tab\there", "line\r\nbreak", "!!!???...", "a.b,c;d:e",
        "[CLS] [SEP] [PAD] [MASK] [UNK]", "##suffix", "don't won't isn't", "$100.00 €50 ¥1000 £5",
        "user@example.com http://example.com/a?b=c", "C++ C# F#", "x" * 100, "x" * 101, "ü" * 50, "ü" * 51,
        "telecommunications" * 6, "…", "—–-", "«guillemets» „Anführungszeichen“ “quotes”", "¿Qué? ¡Sí!",
        "\u0300\u0301 leading marks", "\u115f\u1160 hangul fillers", "\u034f grapheme joiner", "\ufffd",
        "Ⓐⓑ ㎒ ㏂ ℃ ℉ № ™", "½ ¼ ¾ ⁄", "x²³ H₂O", "\U0001d400\U0001d41a math bold",
    ]
    out = [t.encode("utf-8") for t in text]
    out += [b"\xff", b"bad \xff\xfe bytes", b"\xc3", b"caf\xc3", b"\xe4\xb8", b"ok\x80ok", b"\xed\xa0\x80 surrogate",
            b"\xf4\x90\x80\x80 too big", b"\xc0\xaf overlong"]
    out.append(("The quick brown fox jumps over the lazy dog. " * 223)[:10_000].encode("utf-8"))
    out.append(("多言語のテキスト、とても長い。" * 700)[:10_000].encode("utf-8"))
    return out


def build_corpus(n: int = 20_000) -> list:
    """At least ``n`` distinct byte strings (fewer only if the machine has too little text).

    Edge cases come first, then equal shares of each installed source.
    """
    seen, corpus = set(), []

    def add(items, stop=None):
        for item in items:
            item = item if isinstance(item, bytes) else item.encode("utf-8")
            if item not in seen:
                seen.add(item)
                corpus.append(item)
                if stop and len(corpus) >= stop:
                    return

    add(edge_cases())
    add(gettext_strings(n // 2))
    add(licence_strings(n // 10))
    add(metadata_strings(n // 10))
    add(docstring_strings(), stop=n)
    return corpus


if __name__ == "__main__":  # python -m tests.text_corpus: what the corpus holds
    corpus = build_corpus()
    print(len(corpus), "strings;", sum(map(len, corpus)), "bytes", file=sys.stderr)
