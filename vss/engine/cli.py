"""A user's mistake ends a command with one clear line and exit status 2, as argparse's errors do.

The project reports bad input (a missing file, a config or checkpoint that does not fit) as
FileNotFoundError or ValueError with a message naming what to fix; its traceback says nothing
more to a user. `--debug` or the environment variable VSS_DEBUG=1 shows it.
"""
import os
import sys

USER_ERRORS = (FileNotFoundError, ValueError)


def add_debug_argument(parser):
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error (also with the environment variable VSS_DEBUG=1)")
    return parser


def run_main(main, prog, debug=False):
    """main() with its USER_ERRORS printed as `prog: error: message` and exit status 2; with
    `debug` or VSS_DEBUG set (not "" or "0") they propagate with their traceback. A
    sys.exit(message) of main() exits with status 2 too."""
    try:
        return main()
    except SystemExit as e:
        if not isinstance(e.code, str):  # argparse's errors and plain exits keep their status
            raise
        sys.stderr.write(f"{e.code}\n")  # a tool's sys.exit(message): a user error like the others
        sys.exit(2)
    except USER_ERRORS as e:
        if debug or os.environ.get("VSS_DEBUG", "") not in ("", "0"):
            raise
        sys.stderr.write(f"{prog}: error: {e}\n")
        sys.exit(2)
