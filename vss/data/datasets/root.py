"""Where the built-in datasets live: detectron2's convention, `$DETECTRON2_DATASETS`, default ./datasets."""
import os

DATASETS_ENV = "DETECTRON2_DATASETS"
# Read once, as detectron2 does: the built-in datasets are registered at import under this root.
DATASETS_ROOT = os.path.expanduser(os.getenv(DATASETS_ENV, "datasets"))


def root_hint(path):
    """For an error about missing `path`: how the built-in root was chosen, as an absolute path.

    Empty for paths outside that root (datasets registered by the user), where the
    variable plays no part.
    """
    root = os.path.abspath(DATASETS_ROOT)
    if os.path.commonpath([root, os.path.abspath(path)]) != root:
        return ""
    value = os.environ.get(DATASETS_ENV)
    if value is None:
        return (f". {DATASETS_ENV} is unset, so the built-in datasets are looked up in ./datasets "
                f"of the working directory, {root}: set {DATASETS_ENV} to the folder that holds them")
    return f". The built-in datasets are looked up in {DATASETS_ENV}={value} ({root})"
