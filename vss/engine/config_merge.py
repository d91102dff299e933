"""Merging a YAML file and `KEY VALUE` overrides into a config, with misspelt keys named.

yacs reports an unknown key in a YAML file as "Non-existent config key" without the file,
and one on the command line with a bare assertion; both now raise a KeyError naming the
key, where it came from and the closest declared keys.
"""
import difflib
import os
import re

_UNKNOWN = re.compile(r"Non-existent config key: ([\w.]+)")


class UnknownKeyError(KeyError, ValueError):
    """A config key that neither detectron2 nor vss declares: a KeyError as yacs raises, and a
    ValueError, the project's kind of user error (see vss.engine.cli)."""


def _all_keys(node, prefix=""):
    keys = []
    for name, value in node.items():
        if isinstance(value, dict):
            keys.extend(_all_keys(value, f"{prefix}{name}."))
        else:
            keys.append(prefix + name)
    return keys


def _unknown_key(cfg, key, where):
    close = difflib.get_close_matches(key, _all_keys(cfg), n=3, cutoff=0.75)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return UnknownKeyError(f"Non-existent config key: {key} ({where}): expected a key declared by detectron2 "
                    f"or vss/config.py{hint}")


def _missing(cfg, key):
    node = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return True
        node = node[part]
    return False


def merge_config(cfg, config_file, opts=()):
    """cfg.merge_from_file(config_file) then cfg.merge_from_list(opts), unknown keys named."""
    if not os.path.isfile(config_file):  # detectron2 asserts
        raise FileNotFoundError(f"config file {config_file} does not exist")
    try:
        cfg.merge_from_file(config_file)
    except KeyError as e:
        found = _UNKNOWN.search(str(e))
        if not found:
            raise
        raise _unknown_key(cfg, found.group(1), f"in {config_file} or its _BASE_ files") from None
    opts = list(opts)
    if len(opts) % 2:
        raise ValueError(f"config overrides must be KEY VALUE pairs, got an odd number of items: {opts}")
    for key in opts[0::2]:
        # yacs treats the renamed/deprecated keys itself; anything else must exist.
        if _missing(cfg, key) and not (cfg.key_is_deprecated(key) or cfg.key_is_renamed(key)):
            raise _unknown_key(cfg, key, "in the command-line overrides")
    cfg.merge_from_list(opts)
