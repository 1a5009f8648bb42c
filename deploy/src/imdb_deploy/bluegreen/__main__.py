"""`python -m imdb_deploy.bluegreen ACTION ENV ...`: see imdb_deploy.bluegreen.cli."""

import sys

from imdb_deploy.bluegreen.cli import main

sys.exit(main())
