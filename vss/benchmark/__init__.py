"""What the tools/ benchmarks measure and report, importable (their scripts are command lines)."""
