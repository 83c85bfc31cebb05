"""``python -m kvmcpu``: the same as the ``kvmcpu`` command."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
