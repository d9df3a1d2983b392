"""The exit-code convention shared by every command, like diff(1) and cmp(1)."""

EXIT_AGREE = 0  # runtimes agree / the gate passes
EXIT_DIVERGED = 1  # a divergence or a regression was found
EXIT_USAGE = 2  # bad input or usage; also any trouble that prevented an answer


class UsageError(Exception):
    """Bad arguments or input files; the message is one line naming what was expected."""
