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


def test_a_line_logged_under_a_progress_bar_starts_a_line_of_its_own():
    import io

    from tqdm import tqdm

    from lacunes.logs import ProgressAwareHandler

    def logged_during_a_bar(handler_class) -> str:
        stream = io.StringIO()
        handler = handler_class(stream)
        handler.setFormatter(OneLineFormatter("%(levelname)s %(name)s: %(message)s"))
        logger = logging.getLogger("lacunes.test-progress")
        logger.addHandler(handler)
        logger.propagate = False
        try:
            with tqdm(total=3, desc="subjects", file=stream, mininterval=0, ascii=True) as bar:
                bar.update(1)
                logger.error("sub-002: failed")
                bar.update(1)
        finally:
            logger.removeHandler(handler)
        return stream.getvalue()

    glued = logged_during_a_bar(logging.StreamHandler)
    assert "it/s]ERROR lacunes.test-progress" in glued  # a plain handler glues the line to the bar
    text = logged_during_a_bar(ProgressAwareHandler)
    lines = [line.split("\r")[-1] for line in text.split("\n")]
    assert "ERROR lacunes.test-progress: sub-002: failed" in lines and "]ERROR" not in text
