"""``panel serve apps/explorer.py [--args INPUT ... [--model M]]``: the attviz explorer.

Thin on purpose: one :class:`attviz.explorer.Explorer` per browser session, in a template. With
no inputs it opens the bundled demo corpus. ``attviz serve`` does the same without Panel's CLI, and
is the one to share: it listens on localhost unless ``--address`` says otherwise, refuses foreign Host
headers and websockets without an allowed Origin, can require a login, and removes uploads when it
stops. Under ``panel serve`` those are Panel's options (``--address``, ``--allow-websocket-origin``,
``--basic-auth``); each session's uploads are still removed when the session ends.
"""

import argparse
import sys

from attviz.app import create_app

parser = argparse.ArgumentParser(prog="apps/explorer.py")
parser.add_argument("inputs", nargs="*", help="stores or files to explore (default: the demo corpus)")
parser.add_argument("--model", default=None, help="model for live input")
args, _ = parser.parse_known_args(sys.argv[1:])

create_app(args.inputs, args.model).servable()
