from pathlib import Path

from apps.accounts.roles import roles_table_markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "identity.md"


def test_the_roles_table_in_the_docs_is_the_one_in_roles_py():
    text = DOC.read_text()
    shown = text.split("<!-- roles-table:start -->\n", 1)[1].split("\n<!-- roles-table:end -->")[0]

    assert shown == roles_table_markdown(), (
        "docs/identity.md is out of date: paste apps.accounts.roles.roles_table_markdown()"
    )
