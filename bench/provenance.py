"""What every benchmark records about the code it ran: the git commit, "-dirty" with uncommitted changes."""
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def git_commit():
    """The short hash of HEAD (+ "-dirty" when tracked files changed), or None outside a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10)
        if head.returncode:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None
