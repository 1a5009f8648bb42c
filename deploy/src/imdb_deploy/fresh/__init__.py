"""A fresh Debian 12 machine runs the README's two commands (`nox -s fresh`): see .cli."""
