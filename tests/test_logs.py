import logging
import subprocess
import sys

from lacunes.logs import OneLineFormatter


def test_a_name_with_a_newline_cannot_forge_a_log_line():
    formatter = OneLineFormatter("%(levelname)s %(name)s: %(message)s")
    record = logging.LogRecord("lacunes.runner", logging.INFO, __file__, 1, "%s: done", ("sub-1\nERROR lacunes: forged",),
                               None)
    line = formatter.format(record)
    assert line == "INFO lacunes.runner: sub-1\\nERROR lacunes: forged: done" and "\n" not in line
    try:
        raise ValueError("boom")
    except ValueError:
        failed = logging.LogRecord("lacunes", logging.ERROR, __file__, 1, "a\rb\x1b[2J", (), sys.exc_info())
    text = formatter.format(failed)
    assert text.splitlines()[0] == "ERROR lacunes: a\\rb\\x1b[2J" and "Traceback" in text  # the traceback kept


def test_the_command_lines_log_one_line_per_message(tmp_path):
    bad = tmp_path / "in\nINFO lacunes: everything is fine"
    result = subprocess.run([sys.executable, "-m", "lacunes.cli", "predict", "-i", str(bad), "-o", str(tmp_path / "o")],
                            capture_output=True, text=True)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith(("ERROR", "INFO"))]
    assert len(errors) == 1 and "\\nINFO lacunes: everything is fine" in errors[0]
