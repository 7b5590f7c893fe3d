"""``python -m rockstar_mp.cli``: the ``rockstar-mp`` command."""
import sys

from .commands import main

sys.exit(main())
