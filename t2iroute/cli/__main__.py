"""``python -m t2iroute.cli``: the ``t2iroute`` command, as ``python -m t2iroute``."""

import sys

from t2iroute.cli import main

if __name__ == "__main__":
    sys.exit(main())
