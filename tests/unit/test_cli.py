import subprocess
import sys

import pytest

from router.cli import build_parser


@pytest.mark.parametrize("command", ["worker", "serve", "ask", "bench", "route-eval"])
def test_every_command_has_a_help(command, capsys):
    with pytest.raises(SystemExit) as err:
        build_parser().parse_args([command, "--help"])
    assert err.value.code == 0
    assert len(capsys.readouterr().out) > 200


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "router.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "worker" in out.stdout and "serve" in out.stdout
