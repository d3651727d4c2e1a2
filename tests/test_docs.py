"""The generated reference pages: up to date with the code, and covering every command, option and config key."""

import re
from pathlib import Path

import pytest

from lmkit.docs_gen import CLI_REFERENCE, CONFIG_REFERENCE, cli_reference, config_reference, pages
from lmkit.training.config import RunConfig

DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.mark.parametrize("name", [CLI_REFERENCE, CONFIG_REFERENCE])
def test_generated_page_is_up_to_date(name: str) -> None:
    on_disk = (DOCS / name).read_text(encoding="utf-8")
    assert on_disk == pages()[name], f"docs/{name} is stale: regenerate it with `python -m lmkit.docs_gen`"


def test_cli_reference_covers_commands_options_and_examples() -> None:
    text = cli_reference()
    for heading in ("## lmkit train", "## lmkit quickstart", "### lmkit tokenizer encode", "### lmkit ckpt info"):
        assert f"\n{heading}\n" in text
    section = text.split("### lmkit tokenizer encode\n")[1].split("\n### ")[0]
    for option in ("`--tokenizer <path>`", "`--val-fraction <float>`", "`--workers <int>`", "`--json`"):
        assert option in section
    # Placeholders in words, none on flags: not the Python type names typer writes (<list[str]>, <bool>).
    assert not re.search(r"<(str|bool|list\[\w+\])>", text)
    assert "`corpus... <text>`" in section
    quickstart = text.split("## lmkit quickstart\n")[1].split("\n## ")[0]
    assert "    lmkit quickstart --out runs/quickstart" in quickstart  # the docstring's example, as a code block
    assert "\\[default: runs/quickstart\\]" in quickstart
    assert "(default: 300, or what fits --minutes).  \\[x&gt;=1\\]" in quickstart


def test_cli_reference_escapes_what_markdown_would_swallow() -> None:
    text = cli_reference()
    # '<|endoftext|>' in help text would be read as an HTML tag and its pipes as table borders.
    assert "&lt;\\|endoftext\\|&gt;" in text
    assert "<|endoftext|>" not in text.replace("`", "")


def test_config_reference_lists_every_key_of_every_table() -> None:
    text = config_reference()
    for table, field in RunConfig.model_fields.items():
        section = text.split(f"## [{table}]\n")[1].split("\n## ")[0]
        for key in field.annotation.model_fields:
            assert f"| `{key}` |" in section, f"{table}.{key} is missing"


def test_config_reference_gives_type_default_and_meaning() -> None:
    text = config_reference()
    assert "\\[data\\]: the encoded token arrays" in text  # not ": the encoded ...", the table name eaten as markup
    assert "| `lr` | float | `0.0003` | peak learning rate (&gt; 0) |" in text
    batch = "sequences per micro-batch (the global batch, split over processes under torchrun) (&gt; 0)"
    assert f"| `batch_size` | integer | required | {batch} |" in text
    assert '| `dtype` | "auto" or "float32" or "bfloat16" or "float16" | `"auto"` |' in text
    assert "| `grad_clip` | float (or omitted) | `1.0` |" in text


def test_terminal_help_shows_placeholders_in_words() -> None:
    from typer.testing import CliRunner

    from lmkit.cli.app import app

    shown = CliRunner().invoke(app, ["tokenizer", "train", "--help"], env={"COLUMNS": "120"}).stdout
    assert "<text>" in shown and "<int>" in shown
    assert not re.search(r"<(str|bool|list\[\w+\])>", shown), shown
