"""Checks shared by the CLI tests."""


def assert_input_error(result, message: str) -> None:
    """The command exited 2 with one line on stderr, `error: ...`, containing `message`, and no traceback."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert " ".join(message.split()) in lines[0]
    assert "Traceback" not in result.output
