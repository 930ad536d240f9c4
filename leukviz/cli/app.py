"""leukviz app: serve the dashboard that ships inside the package (leukviz/ui/app.py) from any folder, with
Streamlit's own options passed through (`leukviz app --server.port 8502`)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from leukviz.cli.common import CliError

# The settings of the repository's .streamlit/config.toml (which `streamlit run app.py` reads in a checkout), given
# as options here: an installed leukviz is served from any folder, where that file is not read. Each one can be
# overridden on the command line (`leukviz app --server.address 0.0.0.0`). tests/test_packaging.py keeps the two
# alike.
STREAMLIT_OPTIONS: dict[str, str] = {
    "server.address": "127.0.0.1",  # local only unless asked: the dashboard has no login
    "server.headless": "true",
    "server.maxUploadSize": "50",
    "server.enableXsrfProtection": "true",
    "server.enableCORS": "true",
    "server.runOnSave": "false",
    "server.fileWatcherType": "none",  # no watcher on an installed package (and no inotify overflow)
    "browser.gatherUsageStats": "false",
    "client.toolbarMode": "minimal",
}


def entry_script() -> Path:
    """The dashboard's entry script inside the installed package (found without importing streamlit)."""
    return Path(__file__).resolve().parents[1] / "ui" / "app.py"


def _given(options: list[str]) -> set[str]:
    """The Streamlit option names the user gave (--server.port 8502 or --server.port=8502)."""
    return {o[2:].split("=", 1)[0] for o in options if o.startswith("--") and len(o) > 2}


def streamlit_command(options: list[str]) -> list[str]:
    """`python -m streamlit run <leukviz/ui/app.py>` with leukviz's defaults, then the user's options (which win:
    a default the user gives is left out)."""
    bad = [o for o in options if o.startswith("-") and not o.startswith("--")]
    if bad:
        raise CliError(f"leukviz app passes Streamlit's own options, written --section.name VALUE (such as "
                       f"--server.port 8502); not {' '.join(bad)}")
    given = _given(options)
    defaults = [f"--{k}={v}" for k, v in STREAMLIT_OPTIONS.items() if k not in given]
    return [sys.executable, "-m", "streamlit", "run", str(entry_script()), *defaults, *options]


def cmd_app(args) -> int:
    """Serve the dashboard in a child Streamlit process until it ends (Ctrl-C stops both)."""
    script = entry_script()
    if not script.is_file():
        raise CliError(f"the dashboard is missing from this installation ({script}); reinstall leukviz")
    proc = subprocess.Popen(streamlit_command(list(args.streamlit_options)))
    try:
        return proc.wait()
    except KeyboardInterrupt:  # the terminal's Ctrl-C reached Streamlit too: let it finish its shutdown
        return proc.wait()
    except BaseException:  # SIGTERM or SIGHUP to this process alone (cli.main's Terminated): Streamlit goes too
        proc.terminate()
        proc.wait()
        raise


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    """The app command: any further option is Streamlit's (cli.main hands them over as streamlit_options)."""
    a = sub.add_parser(
        "app", help="serve the dashboard (Streamlit) from any folder",
        description="Serve the leukviz dashboard at http://127.0.0.1:8501. Any other option is Streamlit's own "
                    "(`streamlit run --help`), written --section.name VALUE, e.g. --server.port 8502, "
                    "--server.address 0.0.0.0 (to serve a network: put it behind a login), --theme.base dark. "
                    "Runs and caches live in $LEUKVIZ_HOME (default ~/.leukviz), whatever the current folder.")
    a.set_defaults(func=cmd_app, streamlit_options=[])
