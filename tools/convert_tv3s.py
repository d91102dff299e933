#!/usr/bin/env python
"""Convert official TV3S checkpoints (mmseg layout) to this project's layout.

The release saves an mmseg model: `backbone.*` (the encoder) and `decode_head.*` (TV3SHead_shift:
SegFormer's fusion, the Mamba stack `vs`, two classifiers). Here the decode head is split between
SegFormerHead (`sem_seg_head.*`, the per-frame part) and the temporal head StateSpaceSharing
(`temporal.*`); the names below them are the release's, so the conversion is a prefix map:

| official prefix                         | ours                          | what                                  |
|-----------------------------------------|-------------------------------|---------------------------------------|
| backbone.                               | backbone.                     | MiT (or Swin) encoder                 |
| decode_head.linear_c1. .. linear_c4.    | sem_seg_head.linear_c1. .. 4. | per-level Linear C_i -> 256 (`proj`)  |
| decode_head.linear_fuse.                | sem_seg_head.linear_fuse.     | 1x1 conv (`conv`) + SyncBN (`bn`)     |
| decode_head.linear_pred.                | sem_seg_head.linear_pred.     | per-frame (auxiliary) classifier      |
| decode_head.vs.                         | temporal.vs.                  | Mamba layers `layers.{i}.mixer/norm`, `norm_f` |
| decode_head.linear_pred2.               | temporal.linear_pred2.        | classifier of the temporal output     |
| decode_head.conv_seg.                   | dropped                       | base-class classifier the forward never uses |

`--encoder` converts an ImageNet-pretrained MiT checkpoint instead (SegFormer's `mit_b*.pth`: the
encoder's names without a prefix, plus the ImageNet classifier `head.*`, dropped): every key gets
`backbone.`, the starting point of TV3S training (`MODEL.WEIGHTS`).

Every key of the input must match a row (an unknown key is an error naming it), and the result is
checked against the model the config builds: every key of ours (with --encoder: of its encoder)
must be produced, with its shape, and nothing else. The output is `{"model": state_dict}` (.pth)
or, for .pkl, detectron2's model-zoo format (numpy arrays and an "__author__" entry, without which
detectron2 0.6 would take the file for a Caffe2 one and rename keys heuristically).

  python tools/convert_tv3s.py --config-file configs/vspw/tv3s/MiT-B1.yaml \\
      TV3S_B1_official.pth output/tv3s_mit_b1_vspw.pth
  python tools/convert_tv3s.py --encoder --config-file configs/vspw/tv3s/MiT-B1.yaml \\
      mit_b1.pth output/mit_b1_imagenet.pkl

Options may stand anywhere on the line. Config overrides (KEY VALUE pairs) follow the two files;
put them after `--` when a value starts with "-" (otherwise it reads as an option):

  python tools/convert_tv3s.py TV3S_B1_city.pth output/tv3s_mit_b1_city.pth --trusted \\
      --config-file configs/vspw/tv3s/MiT-B1.yaml MODEL.SEM_SEG_HEAD.NUM_CLASSES 19
"""
import argparse
import sys

import vss  # noqa: F401  (first: its warnings filter quiets fvcore's torch.jit deprecation)

from vss.conversion.tv3s import ENCODER_KEY_MAP, KEY_MAP, convert, load_state_dict, model_keys, save
from vss.engine import setup_cfg
from vss.engine.cli import add_debug_argument, run_main


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="official checkpoint (.pth)")
    parser.add_argument("output", help="converted checkpoint (.pth or .pkl)")
    parser.add_argument("--config-file", required=True, metavar="FILE",
                        help="config of the model the weights are for: the result is checked against it")
    parser.add_argument("--encoder", action="store_true",
                        help="the input is an ImageNet-pretrained encoder (keys without prefix, `head.*` dropped)")
    parser.add_argument("--trusted", action="store_true",
                        help="allow arbitrary pickled objects in the input (only for files you trust)")
    add_debug_argument(parser)
    parser.add_argument("opts", nargs="*", metavar="KEY VALUE",
                        help="config overrides after the two files (after `--` when a value starts with '-')")
    # intermixed: options after the positional arguments are still options (a REMAINDER
    # positional would swallow them as overrides)
    args = parser.parse_intermixed_args(argv)
    if not (args.output.endswith(".pth") or args.output.endswith(".pkl")):
        parser.error(f"output {args.output}: the name must end in .pth or .pkl")

    expected = model_keys(setup_cfg(args.config_file, args.opts))
    if args.encoder:
        expected = {k: s for k, s in expected.items() if k.startswith("backbone.")}
    state_dict = load_state_dict(args.input, args.trusted)
    converted = convert(state_dict, ENCODER_KEY_MAP if args.encoder else KEY_MAP, expected, source=args.input)
    save(converted, args.output)
    dropped = len(state_dict) - len(converted)
    print(f"wrote {args.output}: {len(converted)} tensors "
          f"({sum(v.numel() for v in converted.values()):,} values), {dropped} unused keys dropped")


if __name__ == "__main__":
    run_main(main, "convert_tv3s.py", debug="--debug" in sys.argv[1:])
