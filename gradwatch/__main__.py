"""`python -m gradwatch ...`: the same as the `gradwatch` command."""

from .cli import entry

if __name__ == "__main__":
    entry()
