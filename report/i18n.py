"""The language a person reads the report in (`language=en|pt-BR`).

Messages are gettext catalogs kept in the repo, `report/locales/<locale>/LC_MESSAGES/
report.po`, read directly with Babel (no compile step: `make demo`, an editable install and a
wheel all work from the .po). English is the source language: its messages are the msgids.
Numbers, percentages and dates follow the locale through Babel's CLDR data.

Text is produced in several places (findings while an audit is measured, the template while
it renders, the run description, the CLI's summary), so the language is a context variable
set around each (`use`), and `_` / `ngettext` read it when called.

What stays as it is, in every language: metric names, artifact paths, param names and class
names (contracts, or the model's own words).
"""

from __future__ import annotations

import contextlib
import gettext as gettext_module
import io
from contextvars import ContextVar
from datetime import datetime
from decimal import Decimal
from functools import cache
from pathlib import Path

from babel import Locale
from babel.dates import format_datetime
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.numbers import format_decimal, format_percent

from report.errors import OptionError

LANGUAGES = {"en": "English", "pt-BR": "português (Brasil)"}
DOMAIN = "report"
LOCALES_DIR = Path(__file__).resolve().parent / "locales"
MISSING = "—"

_current: ContextVar[str] = ContextVar("report_language", default="en")


def locale_name(language: str) -> str:
    """"pt-BR" -> "pt_BR", the catalog folder's and Babel's spelling."""
    return language.replace("-", "_")


@cache
def translations(language: str) -> gettext_module.NullTranslations:
    """The catalog of `language`, compiled in memory from its .po (English: none needed)."""
    if language == "en":
        return gettext_module.NullTranslations()
    path = LOCALES_DIR / locale_name(language) / "LC_MESSAGES" / f"{DOMAIN}.po"
    with path.open("rb") as po:
        catalog = read_po(po, locale=locale_name(language))
    compiled = io.BytesIO()
    write_mo(compiled, catalog, use_fuzzy=False)
    compiled.seek(0)
    return gettext_module.GNUTranslations(compiled)


@contextlib.contextmanager
def use(language: str):
    """Everything produced inside speaks `language`."""
    if language not in LANGUAGES:
        raise OptionError("language", f"unknown value {language!r}; choose one of "
                          f"{', '.join(LANGUAGES)}")
    token = _current.set(language)
    try:
        yield
    finally:
        _current.reset(token)


def current() -> str:
    return _current.get()


def _(message: str) -> str:
    if not message:  # gettext("") is the catalog's header, never a message
        return message
    return translations(current()).gettext(message)


def ngettext(singular: str, plural: str, n: int) -> str:
    return translations(current()).ngettext(singular, plural, n)


def N_(message: str) -> str:  # noqa: N802 - gettext's name for "mark for extraction only"
    """Marks a message for the catalog where it is declared; `_` translates it where shown."""
    return message


def _locale() -> Locale:
    return Locale.parse(locale_name(current()))


# Numbers are not grouped by thousands (the English report never was: "1234" stays as it
# was), and the value is given to Babel exactly (Decimal of the float), so that it rounds the
# way Python's own formatting does ("27.3%" for 109/400, not Babel's "27.2%").


def percent(value: float | None, digits: int = 1) -> str:
    """0.932 -> "93.2%" in English, "93,2%" in Brazilian Portuguese (CLDR's patterns)."""
    if _is_missing(value):
        return MISSING
    pattern = _locale().percent_formats[None].pattern.replace("#,##", "")
    decimals = "0." + "0" * digits if digits else "0"
    return format_percent(Decimal(float(value)),
                          format=pattern.replace("0%", decimals + "%", 1), locale=_locale())


def decimal(value: float | None, digits: int = 3) -> str:
    """1234.5678 -> "1234.568" / "1234,568"."""
    if _is_missing(value):
        return MISSING
    return format_decimal(Decimal(float(value)), format="0." + "0" * digits if digits else "0",
                          locale=_locale())


def signed(value: float, digits: int = 3) -> str:
    """A difference, with its sign even when positive: "+0.012" / "+0,012"."""
    shown = decimal(value, digits)
    return shown if shown.startswith(("-", "−", MISSING)) else "+" + shown


def number(value: int) -> str:
    """A count, as digits: "1234" in both languages."""
    return format_decimal(value, format="0", locale=_locale())


def timestamp(moment: datetime) -> str:
    """A UTC date and time: ISO order in English (as the report always wrote it), the
    locale's short format otherwise ("05/12/2026 17:07 UTC")."""
    if current() == "en":
        return moment.strftime("%Y-%m-%d %H:%M UTC")
    return format_datetime(moment, "short", tzinfo=moment.tzinfo, locale=_locale()) + " UTC"


def _is_missing(value) -> bool:
    return value is None or value != value  # None or nan
