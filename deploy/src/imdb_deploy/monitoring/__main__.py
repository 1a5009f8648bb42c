"""`python -m imdb_deploy.monitoring COMMAND ...`: see imdb_deploy.monitoring.cli."""

import sys

from imdb_deploy.monitoring.cli import main

sys.exit(main())
