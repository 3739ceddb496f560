"""The `conveyor` command line builds its parsers (every subcommand's module imports) and
answers --help without running anything."""
import pytest

from conveyor import cli


@pytest.mark.parametrize("command", ["run", "runs", "lineage", "diff", "report", "drift", "download", "compile"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    assert exit_.value.code == 0
    assert "usage: conveyor" in capsys.readouterr().out


def test_unknown_subcommand_is_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["no-such-command"])
    assert exit_.value.code == 2
