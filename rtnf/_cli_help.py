"""The ``--help`` of a sub-command, written the same way for every rtnf command.

Shared by :mod:`rtnf.cli` (``rtnf run``, ``rtnf replay``, ...), :mod:`rtnf.study.command`
(``rtnf study ...``) and :mod:`rtnf.apps.roidef.cli` (``rtnf roi ...``). It imports nothing
of rtnf, so those commands use it without importing the top-level parser, which imports them.
"""

from __future__ import annotations

import argparse
import textwrap

#: Width (characters) the description paragraph is filled to.
HELP_WIDTH = 79


def add_command(sub: argparse._SubParsersAction, name: str, help: str, description: str,
                *examples: str) -> argparse.ArgumentParser:
    """Add a sub-command whose ``--help`` has a one-paragraph description and examples.

    Parameters
    ----------
    sub : argparse._SubParsersAction
        What ``add_subparsers`` returned.
    name : str
        The sub-command's name.
    help : str
        One line for the parent's list of sub-commands.
    description : str
        The paragraph (its line breaks and indentation are folded, then it is filled to
        :data:`HELP_WIDTH` characters).
    *examples : str
        Command lines shown under ``example:`` (one) or ``examples:``, kept as written.

    Returns
    -------
    argparse.ArgumentParser
        The sub-command's parser, to add its arguments to.
    """
    epilog = "\n".join(["example:" if len(examples) == 1 else "examples:"] + [f"  {e}" for e in examples])
    return sub.add_parser(name, help=help, description=textwrap.fill(" ".join(description.split()), HELP_WIDTH),
                          epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
