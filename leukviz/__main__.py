"""Entry point for `python -m leukviz`: this process owns its signals (cli.main's process_entry)."""

from leukviz.cli import finish, main

if __name__ == "__main__":
    finish(main(process_entry=True))
