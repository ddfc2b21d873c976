"""One option table: flags, job-file keys and Python keywords all come from pipeline/options.py."""

import re
from pathlib import Path

import click
import pytest

from pipeline.cli import main
from pipeline.jobspec import ALL_KEYS
from pipeline.options import FILE, FLAG, OPTIONS, PYTHON, check_keywords

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def run_flags(command: click.Command) -> set[str]:
    return {opt for p in command.params if isinstance(p, click.Option) for opt in p.opts + p.secondary_opts}


def test_every_option_is_documented_in_its_help_and_the_readme():
    for option in OPTIONS:
        assert option.help and option.help.strip(), f"{option.name} has no help text"
        if FILE in option.places:
            assert f"`{option.name}`" in README or f"`[{option.name}" in README, \
                f"job-file key {option.name} is not in README.md"
        if FLAG in option.places:
            flag = option.flag_name.split("/")[0]
            assert f"`{flag}" in README, f"flag {flag} is not in README.md"
        if option.places == {PYTHON}:
            assert f"`{option.name}" in README, f"keyword {option.name} is not in README.md"


def test_the_cli_flags_and_job_keys_are_the_table():
    flags = {opt for option in OPTIONS if FLAG in option.places for opt in re.split("/", option.flag_name)}
    for name in ("run", "estimate"):
        command = main.commands[name]
        assert run_flags(command) - {"--help", "-h", "--json"} == flags
    assert set(ALL_KEYS) == {option.name for option in OPTIONS if FILE in option.places}
    for option in OPTIONS:  # the flag's help is the table's
        if FLAG in option.places:
            param = next(p for p in main.commands["run"].params if option.flag_name.split("/")[0] in p.opts)
            assert param.help == option.help


def test_unknown_keyword_is_a_type_error_with_a_suggestion():
    with pytest.raises(TypeError, match=r"enrich\(\) got an unexpected keyword argument 'temprature'; "
                                        r"did you mean 'temperature'\?"):
        check_keywords("enrich", ["model", "temprature"], ["model", "temperature"])
