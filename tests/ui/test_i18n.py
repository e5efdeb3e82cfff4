"""The Chinese catalogue is complete, and the committed .mo is compiled from it
(a fresh clone needs no gettext). Refresh both as docs/ui.md says."""

from __future__ import annotations

import ast
import gettext
from pathlib import Path

LOCALE = Path(__file__).resolve().parents[2] / "locale" / "zh_Hans" / "LC_MESSAGES"


def po_entries(path: Path) -> list[dict]:
    """Entries of a .po file: {"msgid", "msgid_plural", "msgstr": [...], "fuzzy"}."""
    entries, entry, field = [], None, None
    for line in [*path.read_text(encoding="utf-8").splitlines(), ""]:
        if not line.strip():
            if entry is not None:
                entries.append(entry)
            entry, field = None, None
            continue
        if entry is None:
            entry = {"msgid": "", "msgid_plural": None, "msgstr": [], "fuzzy": False}
        if line.startswith("#,") and "fuzzy" in line:
            entry["fuzzy"] = True
        elif line.startswith("#"):
            continue
        elif line.startswith('"'):
            text = ast.literal_eval(line)
            if field == "msgstr":
                entry["msgstr"][-1] += text
            else:
                entry[field] += text
        else:
            keyword, _, rest = line.partition(" ")
            text = ast.literal_eval(rest)
            if keyword.startswith("msgstr"):
                field = "msgstr"
                entry["msgstr"].append(text)
            else:
                field = keyword
                entry[field] = text
    return [e for e in entries if e["msgid"]]


ENTRIES = po_entries(LOCALE / "django.po")


def test_every_message_has_a_chinese_translation():
    missing = [e["msgid"] for e in ENTRIES if e["fuzzy"] or not all(e["msgstr"])]
    assert not missing, f"translate these in {LOCALE / 'django.po'}: {missing}"
    assert len(ENTRIES) > 200


def test_the_committed_mo_file_is_compiled_from_the_po_file():
    with open(LOCALE / "django.mo", "rb") as handle:
        catalogue = gettext.GNUTranslations(handle)
    stale = []
    for entry in ENTRIES:
        if entry["msgid_plural"]:
            got = catalogue.ngettext(entry["msgid"], entry["msgid_plural"], 1)
        else:
            got = catalogue.gettext(entry["msgid"])
        if got != entry["msgstr"][0]:
            stale.append(entry["msgid"])
    assert not stale, f"run manage.py compilemessages (docs/ui.md); stale: {stale}"
