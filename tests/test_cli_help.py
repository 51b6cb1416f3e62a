"""A self-explaining CLI: `alignlab --help` lists every subcommand on one line, and `alignlab <cmd> --help` lists the
choices of every enumerated key, one line each, from the one table in alignlab.choices (built from the registries)."""

import dataclasses
import re

import pytest

from alignlab import choices as ch
from alignlab.cli import COMMANDS, main
from alignlab.decoding.registry import DECODING
from alignlab.losses.registry import LOSSES
from alignlab.losses.rl_registry import RL_ALGOS
from alignlab.losses.treg import WEIGHTINGS
from alignlab.models.loading import DTYPES, MODEL_ALIASES
from alignlab.precompute.token_rewards import TEMPLATES
from alignlab.task.gold import VERSIONS


def _help(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def _config_classes() -> dict:
    import importlib

    return {c.config: getattr(importlib.import_module(c.module), c.config) for c in COMMANDS}


def test_top_level_help_lists_every_subcommand_on_one_line(capsys):
    out = _help(capsys)
    for c in COMMANDS:
        assert re.search(rf"^\s+{re.escape(c.name)}\s+{re.escape(c.help)}$", out, re.M), c.name
    assert re.search(r"^\s+setup\s+\S.*$", out, re.M)
    assert "--debug" in out


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: c.name)
def test_command_help_lists_every_choice(cmd, capsys):
    out = _help(capsys, cmd.name)
    lines = [ln.strip() for ln in out.splitlines()]
    for f in dataclasses.fields(_config_classes()[cmd.config]):
        assert any(ln.startswith(f.name + " ") for ln in lines), f.name
    for key, choices in ch.choices_for(cmd.config).items():
        start = next(i for i, ln in enumerate(lines) if ln.startswith(key + " "))
        listed = lines[start + 1 : start + 1 + len(choices.lines())]
        assert listed == [x.strip() for x in choices.lines()], key


def test_table_names_real_keys_and_accepts_the_defaults():
    classes = _config_classes()
    assert set(ch.CONFIG_CHOICES) <= set(classes)
    for name, table in ch.CONFIG_CHOICES.items():
        fields = {f.name: f for f in dataclasses.fields(classes[name])}
        for key, choices in table.items():
            assert key in fields, (name, key)
            f = fields[key]
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            values = default if isinstance(default, list) else [default]
            assert all(v is None or choices.accepts(v) for v in values), (name, key, default)


def test_choices_come_from_the_registries():
    train, gen, demo = (ch.choices_for(n) for n in ("TrainConfig", "GenerateConfig", "DemoConfig"))
    assert train["loss"].values == {n: s.summary for n, s in LOSSES.items()}
    rl = ch.choices_for("RLConfig")["algo"].values
    assert rl == {n: s.summary for n, s in RL_ALGOS.items()} and demo["methods"].values == train["loss"].values | rl
    assert gen["method"].values == {n: s.summary for n, s in DECODING.items()} == demo["decoding"].values
    assert list(train["treg_template"].values) == list(TEMPLATES) and ".json/.yaml" in train["treg_template"].other
    assert list(train["treg_weighting"].values) == list(WEIGHTINGS)
    assert set(train["dtype"].values) | {"fp32", "bf16", "fp16"} == set(DTYPES)
    assert set(MODEL_ALIASES) <= set(train["model"].values)
    assert {f"gold-{v}" for v in VERSIONS} <= set(ch.choices_for("ScoreConfig")["reward"].values)
    assert set(demo["eval_split"].values) == {"test", "validation"}


def test_written_notes_name_existing_values():
    """A note for a value that no longer exists is stale; a value without a note still gets a line (fallback)."""
    assert set(ch.TEMPLATE_NOTES) <= set(TEMPLATES)
    assert set(ch.WEIGHTING_NOTES) <= set(WEIGHTINGS)
    assert set(ch.ALIAS_NOTES) <= set(MODEL_ALIASES)
    assert set(ch.DTYPE_NOTES) <= set(DTYPES)
    assert set(ch.GOLD_NOTES) <= set(VERSIONS)
    for table in ch.CONFIG_CHOICES.values():
        for choices in table.values():
            assert all(d.strip() and "\n" not in d for d in choices.values.values())
