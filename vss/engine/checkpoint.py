"""Checkpoints that are never half-written, and weights that never load silently wrong.

`VSSCheckpointer` is detectron2's DetectionCheckpointer with three changes:

- Saving writes a temporary file in the same folder, fsyncs it and renames it over the target
  (the `last_checkpoint` pointer too), so an interruption leaves the old file or the new one.
- Loading fails when the checkpoint does not fit the model: parameters it leaves out, keys the
  model does not have, shape mismatches, listed by prefix. Expected partial loads pass with an
  info line: each meta-architecture (or any module in it) declares the weights a training start
  may leave out (`weights_may_miss`: a per-frame checkpoint leaves MPVSS's or TV3S's
  `temporal.*` new, an ImageNet checkpoint every head and Swin's output norms) and the checkpoint
  keys it has no use for (`weights_ignored`: a per-frame Mask2Former's `criterion.*` buffer,
  which is made from the config); buffers made from the config (`weights_from_config`: the
  criterion's class weights) may be missing from any checkpoint; the classifier keys of the
  ImageNet checkpoints upstream configs start from are ignored too (IMAGENET_EXTRAS). `allow_partial`
  (MODEL.WEIGHTS_ALLOW_PARTIAL) loads whatever fits.
- A missing, truncated or foreign checkpoint file is an error naming the file and what was
  expected. A .pkl is read without running code from it (vss.engine.safe_pickle) unless
  `trusted` (MODEL.WEIGHTS_TRUSTED).
- Checkpoints of another layout that a module declares (`weights_renamed`, {checkpoint key
  prefix: the module's own prefix}: MPVSS reads the release's `motion.*` as its
  `temporal.flow.*`) load renamed when the checkpoint has keys under the first of those
  prefixes and the model has none; then the usual checks apply to the renamed keys.
"""
import os
import pickle
import re
import zipfile
from collections import Counter

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import SemanticSegmentor

from .safe_pickle import load_pickle

# Keys of ImageNet checkpoints that no segmentation model has: detectron2's R-50.pkl / R-101.pkl
# (classifier, and a stem bias the frozen-BN stem lacks), Swin's converted .pkl (classifier and
# final norm) and MiT's (classifier).
IMAGENET_EXTRAS = re.compile(r"^(fc1000\.(weight|bias)|stem\.conv1\.bias|head\.(weight|bias)|norm\.(weight|bias))$")

# The declarations of meta-architectures defined outside this project.
DECLARED_ELSEWHERE = {SemanticSegmentor: {"weights_may_miss": ("sem_seg_head.",)}}

# Keys are grouped by their first components in error messages.
GROUP_DEPTH = 2


def declared(model, name):
    """The key prefixes `model` and its submodules declare in `name` ("weights_may_miss",
    "weights_ignored" or "weights_from_config"), each under the submodule's own prefix."""
    model = getattr(model, "module", model)  # DistributedDataParallel
    prefixes = []
    for module_name, module in model.named_modules():
        value = getattr(module, name, None)
        if value is None:
            value = DECLARED_ELSEWHERE.get(type(module), {}).get(name, ())
        prefixes += [f"{module_name}.{p}" if module_name else p for p in value]
    return tuple(prefixes)


def declared_renames(model):
    """Every module's `weights_renamed` as {checkpoint prefix: full model prefix}, one dict per module."""
    model = getattr(model, "module", model)  # DistributedDataParallel
    return [{old: f"{name}.{new}" if name else new for old, new in module.weights_renamed.items()}
            for name, module in model.named_modules() if getattr(module, "weights_renamed", None)]


def rename_layout(state, renames, model_keys):
    """`state` with the first layout of `renames` that applies (its first prefix is in `state` and not
    in `model_keys`) renamed, and that layout; (state, None) when none applies."""
    for layout in renames:
        marker = next(iter(layout))
        if any(k.startswith(marker) for k in state) and not any(k.startswith(marker) for k in model_keys):
            renamed = {}
            for key, value in state.items():
                old = next((p for p in layout if key.startswith(p)), None)
                renamed[key if old is None else layout[old] + key[len(old):]] = value
            return renamed, layout
    return state, None


def _prefix(key, depth):
    parts = key.split(".")
    return ".".join(parts[:max(1, min(depth, len(parts) - 1))])


def group_keys(keys, depth=GROUP_DEPTH):
    """"prefix.*: N tensors (e.g. key)" lines, a prefix being (at most) the first `depth`
    components of a key, its name excluded."""
    counts, example = Counter(), {}
    for k in keys:
        counts[_prefix(k, depth)] += 1
        example.setdefault(_prefix(k, depth), k)
    return [f"{prefix}.*: {n} tensor{'s' * (n > 1)} (e.g. {example[prefix]})" for prefix, n in sorted(counts.items())]


def mismatch_report(missing, unexpected, shapes):
    """The lines of an error message, one group per prefix; `shapes` holds (key, ckpt, model)."""
    lines = []
    if missing:
        lines += ["  in the model but not in the checkpoint (they would keep their random initialisation):"]
        lines += ["    " + line for line in group_keys(missing)]
    if unexpected:
        lines += ["  in the checkpoint but not in the model:"]
        lines += ["    " + line for line in group_keys(unexpected)]
    if shapes:
        lines += ["  of another shape in the checkpoint than in the model:"]
        lines += ["    " + line for line in group_keys(k for k, _, _ in shapes)]
        lines += [f"    {k}: {tuple(ckpt)} in the checkpoint, {tuple(own)} in the model" for k, ckpt, own in shapes[:5]]
        if len(shapes) > 5:
            lines += [f"    ... and {len(shapes) - 5} more"]
    return lines


def atomic_write(path, write):
    """Write `path` through `write(binary file)` so that, whenever the process is interrupted,
    `path` holds its old content or all the new one (temporary file in the same folder, fsync,
    rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # KeyboardInterrupt included: no half-written temporary left behind
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    descriptor = os.open(folder, os.O_RDONLY)  # make the rename itself durable
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def model_zoo_checkpoint(data):
    """A loaded .pkl as detectron2's DetectionCheckpointer reads it: the model-zoo layout as it is,
    a Caffe2 / Detectron1 file's blobs with name-matching heuristics."""
    if not isinstance(data, dict):
        raise pickle.UnpicklingError(f"a .pkl checkpoint holds a dict, this one a {type(data).__name__}")
    if "model" in data and "__author__" in data:
        return data
    data = data.get("blobs", data)  # detection models have "blobs", ImageNet models do not
    return {"model": {k: v for k, v in data.items() if not k.endswith("_momentum")}, "__author__": "Caffe2",
            "matching_heuristics": True}


class VSSCheckpointer(DetectionCheckpointer):
    def __init__(self, model, save_dir="", *, for_training=False, allow_partial=False, trusted=False, **kwargs):
        """
        Args:
            for_training: the checkpointer of a training run, whose MODEL.WEIGHTS may lack the
                model's declared `weights_may_miss` (its own checkpoints, to resume from, hold
                everything). Otherwise (evaluation, inference) a checkpoint must hold every weight.
            allow_partial: load whatever fits, with a warning instead of an error.
            trusted: read a .pkl with plain pickle, which runs whatever code the file names.
            kwargs: as DetectionCheckpointer's (save_to_disk, checkpointables).
        """
        super().__init__(model, save_dir, **kwargs)
        self.may_miss = declared(model, "weights_may_miss") if for_training else ()
        self.from_config = declared(model, "weights_from_config")
        self.ignored = declared(model, "weights_ignored")
        self.allow_partial = allow_partial
        self.renames = declared_renames(model)
        self.trusted = trusted
        self._loading = None
        # model keys the last load left without a value (None: it loaded no file)
        self.missing_keys = None

    def save(self, name, **kwargs):
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {path}")
        atomic_write(path, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename):
        atomic_write(os.path.join(self.save_dir, "last_checkpoint"), lambda f: f.write(last_filename_basename.encode()))

    def load(self, path, *args, **kwargs):
        # fvcore reports a missing file with a bare assertion, after trying to fetch it as a URL.
        if path and not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint {path} does not exist: MODEL.WEIGHTS must be a local "
                                    "checkpoint file (nothing is downloaded)")
        self._loading = path
        self.missing_keys = None
        try:
            return super().load(path, *args, **kwargs)
        finally:
            self._loading = None

    def _load_file(self, filename):
        # A truncated or foreign file surfaces as an unpickling or zip error naming neither the file
        # nor what was expected.
        try:
            if filename.endswith(".pkl") and not self.trusted:
                return model_zoo_checkpoint(load_pickle(filename))
            return super()._load_file(filename)
        except (EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError) as e:
            raise ValueError(f"checkpoint {filename} cannot be read, it is truncated or not a checkpoint "
                             f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no data'}): expected "
                             "a .pth written by torch.save or a .pkl of {'model': {name: array}}") from e

    def _load_model(self, checkpoint):
        checkpoint["model"], layout = rename_layout(checkpoint["model"], self.renames, self.model.state_dict())
        if layout:
            self.logger.info(f"{self._loading} names its weights {', '.join(f'{a}*' for a in layout)}: loading them "
                             f"as {', '.join(f'{b}*' for b in layout.values())}")
        incompatible = super()._load_model(checkpoint)
        self.missing_keys = list(incompatible.missing_keys)
        return incompatible

    def _log_incompatible_keys(self, incompatible):
        # Called by load() with what did not fit; fvcore only logs warnings here.
        expected = [k for k in incompatible.missing_keys if k.startswith(self.may_miss)]
        missing = [k for k in incompatible.missing_keys if not k.startswith(self.may_miss + self.from_config)]
        ignored = [k for k in incompatible.unexpected_keys if IMAGENET_EXTRAS.match(k) or k.startswith(self.ignored)]
        unexpected = [k for k in incompatible.unexpected_keys if k not in ignored]
        shapes = incompatible.incorrect_shapes
        name = type(getattr(self.model, "module", self.model)).__name__
        if missing or unexpected or shapes:
            # every missing weight is listed then, the declared ones included: the load failed
            lines = [f"checkpoint {self._loading} does not fit the model ({name}):",
                     *mismatch_report(incompatible.missing_keys, unexpected, shapes)]
            if self.renames:
                layouts = "; ".join(", ".join(f"{old}* (as {new}*)" for old, new in layout.items())
                                    for layout in self.renames)
                lines.append(f"Besides its own names, the model reads checkpoints naming its weights {layouts}.")
            if not self.allow_partial:
                lines.append("Is it the checkpoint of another model or config? To load only what fits, "
                             "set MODEL.WEIGHTS_ALLOW_PARTIAL True.")
                raise ValueError("\n".join(lines))
            self.logger.warning("\n".join(lines + ["Loading what fits (MODEL.WEIGHTS_ALLOW_PARTIAL)."]))
        if expected:
            new = ", ".join(group_keys(expected, depth=1))
            self.logger.info(f"{self._loading} holds no weights for {new}: as declared for a training start "
                             f"of {name} (weights_may_miss {self.may_miss}), they start from their initialisation")
        if ignored:
            self.logger.info(f"{self._loading}: ignoring its keys {sorted(ignored)}, which {name} has no use for")
