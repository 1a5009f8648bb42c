"""`python -m imdb_deploy.report [TIMELINE.json ...] [--latest] [--out DIR]`: see .cli."""

import sys

from imdb_deploy.report.cli import main

sys.exit(main())
