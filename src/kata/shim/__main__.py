"""``python -m kata.shim``: the same as containerd-shim-kata-v2."""

import sys

from kata.shim.main import main

sys.exit(main())
