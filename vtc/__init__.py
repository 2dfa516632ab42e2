"""vtc: static-budget visual token compression for exported vision models."""

import sys as _sys

__version__ = "0.1.0"

# Run as a program (`vtc`, `vtc-export`, `python -m vtc....`): from here on, Ctrl-C or
# SIGTERM during the imports before a command's guard runs exits 130 with one line
# instead of a KeyboardInterrupt traceback (`vtc.errors.install_startup_handlers`).
# Imported as a library, nothing is installed.
if _sys.argv[:1] == ["-m"] or _sys.argv[0].rpartition("/")[2] in ("vtc", "vtc-export"):
    from vtc.errors import install_startup_handlers

    install_startup_handlers()
