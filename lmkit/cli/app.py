"""The `lmkit` entry point: the Typer app, its command groups, and how failures become exit statuses."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import warnings
from typing import Any

import typer
from rich.markup import escape
from typer.core import TyperGroup

from lmkit import __version__
from lmkit.cli import chat as chat_cli
from lmkit.cli import ckpt as ckpt_cli
from lmkit.cli import eval as eval_cli
from lmkit.cli import generate as generate_cli
from lmkit.cli import interop as interop_cli
from lmkit.cli import model as model_cli
from lmkit.cli import quickstart as quickstart_cli
from lmkit.cli import runs as runs_cli
from lmkit.cli import serve as serve_cli
from lmkit.cli import tokenizer as tokenizer_cli
from lmkit.cli import train as train_cli
from lmkit.cli.common import err_console
from lmkit.errors import InputError
from lmkit.interrupts import exit_status, ignore_stop_signals, raise_on_signals

try:  # recent typer vendors click under typer._click; older releases use click itself
    from typer._click.exceptions import NoArgsIsHelpError, UsageError
except ImportError:  # pragma: no cover
    from click.exceptions import NoArgsIsHelpError, UsageError

EXIT_INPUT_ERROR = 2
EXIT_RUNTIME_ERROR = 1


def _belongs_to_the_cli_framework(exc: Exception) -> bool:
    """Usage errors and exits raised by click/typer, which they report themselves (exit 2 for usage)."""
    return type(exc).__module__.split(".")[0] in {"click", "typer"}


def _print_warning(message: Warning | str, category: type[Warning], *args: object, **kwargs: object) -> None:
    """Show a warning as one line on stderr, `warning: ...`, without the source line Python adds."""
    err_console.print(f"[yellow]warning:[/yellow] {escape(str(message))}", highlight=False)
def _report_usage_error(err: UsageError) -> None:
    """Print a usage error as one line, like every other error, and exit 2 (click and typer print a box).

    `lmkit` alone (no_args_is_help) raises a usage error too, whose message is the help: shown as it is.
    """
    if isinstance(err, NoArgsIsHelpError) or os.environ.get("LMKIT_DEBUG"):
        raise err
    message = " ".join(err.format_message().split())
    where = f" (see {err.ctx.command_path} --help)" if err.ctx is not None else ""
    err_console.print(f"[bold red]error:[/bold red] {escape(message + where)}", highlight=False, markup=True)
    raise typer.Exit(EXIT_INPUT_ERROR)


# The placeholders recent typer writes in --help as Python type names, and the words shown instead.
_PLAIN_PLACEHOLDERS = {"<str>": "<text>", "<list[str]>": "<text>", "<list[Path]>": "<path>", "<list[int]>": "<int>"}


def _plain_placeholders(command: Any) -> None:
    """Give `command` and its subcommands placeholders in words (`--set <text>`, not `<list[str]>`) and none for
    flags (not `<bool>`, --help included). Older typer releases, without `display_type`, write TEXT, PATH, INTEGER."""
    for param in command.params:
        if getattr(param, "is_flag", False):
            param.metavar = ""
            continue
        plain = _PLAIN_PLACEHOLDERS.get(param.display_type(None)) if hasattr(param, "display_type") else None
        if plain is not None and param.param_type_name == "option":
            param.metavar = plain
        elif plain is not None:  # an argument's metavar would replace its name: replace only the type shown
            param.display_type = lambda ctx, plain=plain: plain
    make_help_option = command.get_help_option  # --help is made when help is asked for: a flag like the others

    def help_option(ctx: Any) -> Any:
        option = make_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option

    command.get_help_option = help_option
    for subcommand in getattr(command, "commands", {}).values():
        _plain_placeholders(subcommand)


class _LmkitGroup(TyperGroup):
    """Runs a command and turns what it raises into one line on stderr and an exit status.

    InputError (bad input) exits 2; any other failure exits 1; Ctrl-C exits 130 and SIGTERM 143, each after
    the command has cleaned up (see lmkit.interrupts); a closed stdout pipe ends the command quietly with 0.
    With LMKIT_DEBUG=1 the exception propagates with its traceback.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _plain_placeholders(self)

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().make_context(*args, **kwargs)
        except UsageError as err:  # a bad option before the command name: `lmkit --bogus`
            _report_usage_error(err)

    def invoke(self, ctx: Any) -> Any:
        try:
            with raise_on_signals(), warnings.catch_warnings():
                warnings.showwarning = _print_warning
                return super().invoke(ctx)
        except UsageError as err:  # an unknown command, a missing or malformed option or argument
            _report_usage_error(err)
        except KeyboardInterrupt as interrupt:
            ignore_stop_signals()  # a second Ctrl-C must not break into the exit
            if os.environ.get("LMKIT_DEBUG"):
                raise
            signum = getattr(interrupt, "signum", signal.SIGINT)
            err_console.print(f"[yellow]{'interrupted' if signum == signal.SIGINT else 'terminated'}[/yellow]")
            raise typer.Exit(exit_status(signum)) from None
        except BrokenPipeError:
            # The reader of stdout went away (`lmkit generate ... | head`): stop quietly, as Unix tools do.
            # stdout is pointed at /dev/null so the interpreter's final flush does not fail again.
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(0) from None
        except Exception as exc:
            if os.environ.get("LMKIT_DEBUG") or _belongs_to_the_cli_framework(exc):
                raise
            status = EXIT_INPUT_ERROR if isinstance(exc, InputError) else EXIT_RUNTIME_ERROR
            message = str(exc) or type(exc).__name__
            if status == EXIT_RUNTIME_ERROR:
                message = f"{type(exc).__name__}: {message} (set LMKIT_DEBUG=1 for a traceback)"
            # escape: a message such as 'pip install "lmkit[plot]"' must not lose its brackets to rich markup
            err_console.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, markup=True)
            raise typer.Exit(status) from None


app = typer.Typer(
    cls=_LmkitGroup,
    name="lmkit",
    help="Train small language models from scratch: tokenizer, model, training, sampling.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _print_version(value: bool) -> None:
    if value:
        print(f"lmkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Train small language models from scratch: tokenizer, model, training, sampling."""


app.command(name="train")(train_cli.train)
app.command(name="generate")(generate_cli.generate)
app.command(name="chat")(chat_cli.chat)
app.command(name="eval")(eval_cli.eval_command)
app.add_typer(ckpt_cli.app, name="ckpt", help="Inspect checkpoints written by lmkit train.")
app.add_typer(tokenizer_cli.app, name="tokenizer", help="Train, apply and inspect byte-level BPE tokenizers.")
app.add_typer(model_cli.app, name="model", help="Account for a model's parameters, FLOPs, memory and time.")
app.command(name="quickstart")(quickstart_cli.quickstart)
app.add_typer(runs_cli.app, name="runs", help="List, compare and plot training runs.")
app.add_typer(interop_cli.export_app, name="export", help="Write a checkpoint as a Hugging Face Llama folder.")
app.add_typer(interop_cli.import_app, name="import", help="Read a Hugging Face Llama folder into a checkpoint.")
app.command(name="serve")(serve_cli.serve)


def main() -> None:
    """Console-script entry point."""
    app()
