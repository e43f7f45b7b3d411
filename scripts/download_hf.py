"""Download a model (or dataset) repository from the Hugging Face Hub into a local folder.

    python scripts/download_hf.py --repo_id genmo/mochi-1-preview --local_dir data/mochi --repo_type model

Then point MODEL_PATH at --local_dir. Without network access it fails with one line saying so.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repo_id", required=True, help="e.g. genmo/mochi-1-preview")
    parser.add_argument("--local_dir", required=True, help="folder to download into")
    parser.add_argument("--repo_type", default="model", choices=["model", "dataset", "space"])
    parser.add_argument("--revision", default=None, help="branch, tag or commit (default: main)")
    args = parser.parse_args(argv)

    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(
            repo_id=args.repo_id, local_dir=args.local_dir, repo_type=args.repo_type, revision=args.revision
        )
    except KeyboardInterrupt:
        print("download interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except Exception as err:  # every failure (offline, 404, gated, disk) becomes one line, not a traceback
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(
            f"error: could not download {args.repo_type} {args.repo_id} to {args.local_dir}: "
            f"{type(err).__name__}: {reason[:300]}",
            file=sys.stderr,
        )
        return 1
    print(f"downloaded {args.repo_id} to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
