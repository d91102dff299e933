"""detectron2's DetectionCheckpointer with errors that name the checkpoint file.

fvcore reports a missing file with a bare assertion (and would first try to fetch
URLs, while nothing is downloaded here); a truncated or foreign file surfaces as an
unpickling or zip error that names neither the file nor what was expected.
"""
import os
import pickle
import zipfile

from detectron2.checkpoint import DetectionCheckpointer


class VSSCheckpointer(DetectionCheckpointer):
    def load(self, path, *args, **kwargs):
        if path and not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint {path} does not exist: MODEL.WEIGHTS must be a local "
                                    "checkpoint file (nothing is downloaded)")
        return super().load(path, *args, **kwargs)

    def _load_file(self, filename):
        try:
            return super()._load_file(filename)
        except (EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError) as e:
            raise ValueError(f"checkpoint {filename} cannot be read, it is truncated or not a checkpoint "
                             f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no data'}): expected "
                             "a .pth written by torch.save or a .pkl of {'model': {name: array}}") from e
