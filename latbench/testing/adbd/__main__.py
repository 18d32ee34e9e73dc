"""``python -m latbench.testing.adbd``: run a loopback phone until Ctrl-C (for trying a client by hand).

Example::

    python -m latbench.testing.adbd --port 27183 --authorized-key ~/.android/adbkey.pub &
    adb connect 127.0.0.1:27183 && adb shell getprop ro.product.model

Only the keys given with ``--authorized-key`` get in. ``--auto-accept`` (any key) and ``--no-auth`` let
every local process run commands on the phone as you (as root, in the namespace sandbox).
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from .phone import LoopbackPhone
from .sandbox import SandboxError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m latbench.testing.adbd", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--authorized-key", action="append", default=[], metavar="ADBKEY_PUB",
                        help="an adbkey.pub that may connect (repeatable); other keys stay 'unauthorized'")
    parser.add_argument("--auto-accept", action="store_true",
                        help="accept any host key (lets every local process in; commands run as you)")
    parser.add_argument("--no-auth", action="store_true",
                        help="skip AUTH entirely, like ro.adb.secure=0 (lets every local process in)")
    parser.add_argument("--sandbox", default="auto", choices=("auto", "namespace", "userns"))
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        phone = LoopbackPhone(auto_accept=args.auto_accept, require_auth=not args.no_auth,
                              authorized_keys=args.authorized_key, port=args.port, sandbox=args.sandbox).start()
    except (SandboxError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f"loopback phone listening on {phone.serial} (sandbox: {phone.sandbox_mechanism}); "
          f"its files: {phone.files.root}; Ctrl-C stops it", flush=True)
    if not (args.authorized_key or args.auto_accept or args.no_auth):
        print("no host key may connect: give --authorized-key ~/.android/adbkey.pub (your adb's key)", flush=True)
    try:
        stop.wait()
    finally:
        phone.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
