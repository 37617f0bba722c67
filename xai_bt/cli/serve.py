"""`python -m xai_bt serve [--host 127.0.0.1] [--port 8000] [--models-dir models] [--out DIR]`.

Starts the local review web page (`xai_bt.review.server`, Flask on werkzeug's threaded server): upload a scan,
pick a model and methods, see the review. Each review is saved as a self-contained HTML page in --out and
served at a bookmarkable address. At start the default model is loaded, then (in the background) warmed up
and timed on a shipped sample, so the page can say how long a review takes here; --no-preload skips both.
Stop with Ctrl-C.
"""
from __future__ import annotations

import argparse
import sys
import threading

from xai_bt.cli._common import UsageError, add_model_options, fail, load_bundle


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this computer only; the page has no login)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 picks a free one)")
    p.add_argument("--models-dir", default=None,
                   help="folder whose sub-folders are model bundles (default: the repository's models/)")
    p.add_argument("--out", default="reviews", help="folder for the saved review pages (default: reviews/)")
    p.add_argument("--max-upload-mb", type=float, default=20, help="largest upload accepted (default: 20 MB)")
    p.add_argument("--no-preload", action="store_true",
                   help="load the default model on first use, not at start (and skip timing it on a sample)")
    p.add_argument("--model", help="also offer this model, first and as the default: a bundle folder, or your own "
                                   "Keras model file with --classes")
    add_model_options(p)


def main(args: argparse.Namespace) -> int:
    from xai_bt.model.bundle import BundleError, default_model_path
    from xai_bt.review.server import make_app, make_server

    models_dir = args.models_dir or default_model_path().parent
    if not 0 < args.max_upload_mb <= 1024:
        return fail(f"--max-upload-mb must be in (0, 1024], got {args.max_upload_mb}")
    try:
        app = make_app(models_dir, args.out, int(args.max_upload_mb * 1024 * 1024))
        if args.model:
            app.add(load_bundle(args.model, args), args.model)
        if not args.no_preload:
            app.bundle(app.default_model)
        server = make_server(app, args.host, args.port)
    except (ValueError, BundleError, UsageError, OSError) as e:   # BundleError is a ValueError; OSError: port taken
        return fail(str(e))
    host, port = server.server_address[:2]
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {args.host}: anyone who can reach this address can upload scans "
              "(there is no login)", file=sys.stderr)
    print(f"xai_bt review page on http://{'localhost' if host == '127.0.0.1' else host}:{port}/  "
          f"(models: {', '.join(app.models)}; reviews saved in {app.out_dir}; Ctrl-C stops)", flush=True)
    if not args.no_preload:     # while the first user picks a scan; a review sent meanwhile waits for it
        threading.Thread(target=app.warm_up, args=(app.default_model,), daemon=True).start()
    try:
        server.serve_forever()          # returns on Ctrl-C (werkzeug's server catches it)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    print("stopped", file=sys.stderr)
    return 0
