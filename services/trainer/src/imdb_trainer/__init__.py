"""IMDb rating model trainer: ingest, features, training, evaluation, artifact."""

import os

# LightGBM's OpenMP threads spin while they wait at barriers. On a busy 2-core machine (CI, a
# shared developer box) that turned a 3 s training into 11-41 s in our measurements; sleeping
# waiters cost almost nothing when the machine is idle. libgomp reads this when LightGBM loads,
# so it must be set before `import lightgbm`; an explicit setting in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
