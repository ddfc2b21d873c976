"""Every command and option is documented; the CLI's own error paths work without a server."""

import subprocess
import sys

import click
from click.testing import CliRunner

from pipeline.cli import main


def walk(group):
    for name, command in group.commands.items():
        yield name, command
        if isinstance(command, click.Group):
            yield from walk(command)


def test_every_command_and_option_has_help():
    for name, command in walk(main):
        assert command.help, f"command {name} has no help"
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, f"{name} {param.opts} has no help"


def test_python_dash_m_pipeline_works():
    result = subprocess.run([sys.executable, "-m", "pipeline", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "run" in result.stdout and "summary" in result.stdout


def test_bad_job_exits_2_without_a_traceback(tmp_path):
    (tmp_path / "in.csv").write_text("review\nnice\n")
    result = CliRunner().invoke(main, ["run", "--input", str(tmp_path / "in.csv"), "--model", "gpt-4o-mini",
                                       "--template", "{revew}", "--base-url", "http://127.0.0.1:9/v1"])
    assert result.exit_code == 2
    assert "'revew'" in result.output and "review" in result.output
    assert "Traceback" not in result.output
