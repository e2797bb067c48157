from __future__ import annotations

import sys

from nvembed.cli import main

sys.exit(main())
