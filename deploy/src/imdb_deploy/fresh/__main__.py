"""`python -m imdb_deploy.fresh [run|down] [--keep]`: see imdb_deploy.fresh.cli."""

import sys

from imdb_deploy.fresh.cli import main

sys.exit(main())
