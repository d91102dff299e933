"""What the tools/ benchmarks measure and report, importable (their scripts are command lines)."""
import os

# The repository: the benchmarks train its configs/ and write under its output/ by default.
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
