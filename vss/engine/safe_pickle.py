"""Reading a .pkl checkpoint without running code from it.

A pickle may name any importable callable and call it while it is read (os.system included).
Checkpoints in detectron2's model-zoo layout (upstream Mask2Former's, tools/convert_tv3s.py's:
{"model": {name: array}, "__author__": ..., "matching_heuristics": ...}) need only containers,
strings, numbers and numpy arrays, so `load_pickle` admits those globals and nothing else. The
list covers the pickles of numpy 1.x (numpy.core) and 2.x (numpy._core), of Python 2 and 3.
"""
import importlib
import pickle

# (module, name) a checkpoint of arrays refers to; numpy.core and numpy._core are the same module
# under numpy 1.x and 2.x names.
ALLOWED = {
    ("collections", "OrderedDict"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),  # arrays in protocol-5 pickles
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),  # bytes in a protocol-2 pickle written by Python 3
}


class UnsafePickleError(ValueError):
    """A pickle refers to a global that a checkpoint of arrays does not hold."""


def _module(name):
    """The module `name`; numpy.core.* and numpy._core.* resolve to the one this numpy has (numpy 2
    keeps numpy.core as a deprecated alias)."""
    if name.startswith(("numpy.core.", "numpy._core.")):
        for package in ("numpy._core", "numpy.core"):
            try:
                return importlib.import_module(f"{package}.{name.split('.', 2)[2]}")
            except ImportError:
                continue
    return importlib.import_module(name)


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, source):
        super().__init__(file, encoding="latin1")  # Python 2 pickles, as detectron2 reads them
        self.source = source

    def find_class(self, module, name):
        if (module, name) not in ALLOWED:
            raise UnsafePickleError(
                f"checkpoint {self.source} refers to {module}.{name}, which a checkpoint of arrays does not hold: "
                "refused before anything in the file ran (a .pkl may run code while it is read). If the file "
                "comes from a source you trust, set MODEL.WEIGHTS_TRUSTED True")
        return getattr(_module(module), name)


def load_pickle(path):
    """The object pickled in `path`, built from containers, strings, numbers and numpy arrays only.

    Raises UnsafePickleError (a ValueError) naming the file and the first other global it refers to.
    """
    with open(path, "rb") as f:
        return _Unpickler(f, path).load()
