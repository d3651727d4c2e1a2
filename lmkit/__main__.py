"""`python -m lmkit` runs the command line."""

from lmkit.cli.app import main

if __name__ == "__main__":
    main()
