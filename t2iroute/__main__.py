"""``python -m t2iroute``: the ``t2iroute`` command (:func:`t2iroute.cli.main`)."""

import sys

from t2iroute.cli import main

if __name__ == "__main__":
    sys.exit(main())
