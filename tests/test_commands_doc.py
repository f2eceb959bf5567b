"""docs/commands.md holds every command's --help as the code prints it (scripts/make_commands_doc.py
writes it): a changed option, help text or command fails here until the page is regenerated."""

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _script():
    spec = importlib.util.spec_from_file_location("make_commands_doc", REPO / "scripts" / "make_commands_doc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _blocks(module, page):
    return {m.group("name"): " ".join(m.group(0).split()) for m in module.BLOCK.finditer(page)}


def test_commands_page_is_the_generated_one():
    """Compared with whitespace collapsed, so that another click version's line wrapping alone
    does not fail it; `python scripts/make_commands_doc.py --check` compares byte for byte."""
    module = _script()
    page = (REPO / "docs" / "commands.md").read_text(encoding="utf-8")
    committed, generated = _blocks(module, page), _blocks(module, module.generate(page))
    assert sorted(generated) == sorted(["", *module.cli.commands]), "a command has no --help block"
    for name, text in generated.items():
        assert committed.get(name) == text, (f"docs/commands.md: `rnnlm {name} --help` changed: run "
                                             f"python scripts/make_commands_doc.py")


def test_every_option_of_every_command_is_on_the_page():
    module = _script()
    page = (REPO / "docs" / "commands.md").read_text(encoding="utf-8")
    for name, command in module.cli.commands.items():
        assert f"## rnnlm {name}\n" in page, name
        for param in command.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("-"):
                    assert opt in page, f"rnnlm {name} {opt}"
