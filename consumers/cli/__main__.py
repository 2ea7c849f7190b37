"""`python -m streamrec.consumers.cli ...`: the `streamrec` command."""

import sys

from streamrec.consumers.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
