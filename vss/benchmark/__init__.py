"""What the tools/ benchmarks measure and report, importable (their scripts are command lines)."""
import os

# The repository: the benchmarks train its configs/ and write under its output/ by default.
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def per_seed(values):
    """One table cell of several seeds' values: "a / b / c" at one decimal (strings as given), "-"
    for a seed without the value."""
    return " / ".join("-" if v is None else v if isinstance(v, str) else f"{v:.1f}" for v in values)
