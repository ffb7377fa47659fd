"""The `trtrun` command: a click group, one module per subcommand, and one error handler.

Every error a user can cause (TrtrunError, ValueError, OSError, a click usage error) ends as one line on
stderr, `trtrun: error: ...`, and exit code 1 (2 for usage errors), never a traceback; `--debug` (or
TRTRUN_DEBUG=1) shows the traceback. Subcommand modules import only click at module level, so
`trtrun --help` loads no numpy-heavy code, no onnxruntime, no torch, and asks no GPU anything.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from importlib.util import find_spec

import click

from .._version import __version__

# subcommand name -> module in trtrun.cli that defines `command` (a click.Command), in --help order.
# A listed module that does not exist (yet) is left out of --help; to add a command, write its module
# and list it here.
COMMANDS = {
    "info": "info",
    "export": "export",
    "build": "build",
    "run": "run",
    "inspect": "inspect",
    "check": "check",
    "bench": "bench",
    "serve": "serve",
    "embed": "embed",
}

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

_state = {"debug": bool(os.environ.get("TRTRUN_DEBUG"))}


class _Group(click.Group):
    """Loads a subcommand's module when it is listed or called."""

    def list_commands(self, ctx):
        return [name for name, mod in COMMANDS.items() if find_spec(f"{__package__}.{mod}") is not None]

    def get_command(self, ctx, name):
        mod = COMMANDS.get(name)
        if mod is None or find_spec(f"{__package__}.{mod}") is None:
            return None
        return importlib.import_module(f".{mod}", __package__).command


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "-V", "--version", prog_name="trtrun")
@click.option("--debug", is_flag=True, help="show the Python traceback of an error")
def cli(debug: bool):
    """Turn an ONNX transformer into an engine plan and run it (numpy reference backend or CUDA runtime).

    \b
    Typical use:
      trtrun export .data/minilm -o minilm.onnx
      trtrun build minilm.onnx --hybrid -o minilm.plan
      trtrun run minilm.plan --text "a fine film" --compare minilm.onnx
      trtrun inspect minilm.plan
    """
    if debug:
        _state["debug"] = True


def _say(msg: str) -> None:
    click.echo(f"trtrun: error: {msg}", err=True)


def _message(e: BaseException) -> str:
    # str(KeyError) is the quoted key; OSError without a message still has a useful class name
    text = str(e).strip() or type(e).__name__
    return text.replace("\n", "\n  ")  # continuation lines indented under the first


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `trtrun` console script; returns the exit code."""
    from ..errors import TrtrunError

    args = sys.argv[1:] if argv is None else list(argv)
    _state["debug"] = bool(os.environ.get("TRTRUN_DEBUG"))
    if "--debug" in args:  # anywhere on the line, and in effect for errors raised while parsing too
        _state["debug"] = True
        args = [a for a in args if a != "--debug"]
    try:
        rv = cli.main(args=args, prog_name="trtrun", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.exceptions.Abort:
        _say("aborted")
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        _say("interrupted")
        return EXIT_INTERRUPTED
    except click.UsageError as e:
        if _state["debug"]:
            traceback.print_exc()
        hint = ""
        if e.ctx is not None:
            hint = f" (see '{e.ctx.command_path} --help')"
        _say(e.format_message() + hint)
        return EXIT_USAGE
    except click.ClickException as e:  # e.g. a file click could not open
        if _state["debug"]:
            traceback.print_exc()
        _say(e.format_message())
        return e.exit_code or EXIT_ERROR
    except BrokenPipeError:  # `trtrun inspect x.plan | head`
        return EXIT_ERROR
    except ModuleNotFoundError as e:  # an optional package imported where no feature check caught it
        from .._optional import EXTRAS, install_hint

        if _state["debug"]:
            traceback.print_exc()
        hint = install_hint(e.name)
        if hint is None:
            _say(f"internal error: {type(e).__name__}: {_message(e)} (run with --debug for the traceback)")
        else:
            _say(f"{EXTRAS[e.name.split('.')[0]][0]} is not installed: {hint}")
        return EXIT_ERROR
    except (TrtrunError, ValueError, OSError, MemoryError) as e:
        if _state["debug"]:
            traceback.print_exc()
        _say(_message(e))
        return EXIT_ERROR
    except Exception as e:  # a bug in trtrun or a library it calls: still no traceback unless asked
        if _state["debug"]:
            traceback.print_exc()
        _say(f"internal error: {type(e).__name__}: {_message(e)} (run with --debug for the traceback)")
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
