"""``python -m superalign.compare A B --out DIR``, and the ``superalign-compare`` command.

Both write files only, so matplotlib draws with its file backend (Agg); the library's
:func:`superalign.compare.main` leaves the backend to its caller.
"""

import sys


def cli() -> int:
    """The command line: :func:`superalign.compare.main` with matplotlib's Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    from superalign.compare import main

    return main()


if __name__ == "__main__":
    sys.exit(cli())
