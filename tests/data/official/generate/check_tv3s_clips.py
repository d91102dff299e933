# Checks vss.modeling.tv3s.clips against the TV3S release's own clip-index code (its methods taken from the
# checkout and run, not copied): python check_tv3s_clips.py <TV3S checkout>.
import ast, os, random, sys
OFFICIAL = sys.argv[1] if len(sys.argv) > 1 else "/work/official/TV3S"
import numpy as np
src = open(OFFICIAL + "/utils/datasets/custom.py").read()
tree = ast.parse(src)
cls = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "CustomDataset_video2"][0]
funcs = {f.name: f for f in cls.body if isinstance(f, ast.FunctionDef)}
ns = {"os": os, "np": np, "random": random}
for name in ("prepare_test_img2", "prepare_train_img2"):
    mod = ast.Module(body=[funcs[name]], type_ignores=[])
    exec(compile(mod, "custom.py", "exec"), ns)

class Stop(Exception):
    pass

class Fake:
    img_suffix, seg_map_suffix, data_root = ".jpg", ".png", "/x"
    dilation_mode = False
    dilation = [-9, -6, -3]
    flip_video = True
    def __init__(self, n):
        self.imglist = [f"{i:08d}.jpg" for i in range(n)]
        self.imgdic = {"v": self.imglist}
        self.videolists = ["v"]
        self.img_all = [["v", x] for x in self.imglist]
        self.seen = []
    def pre_pipeline(self, results, a, b):
        pass
    def pipeline_load(self, results):
        self.seen.append(int(results["img_info"]["filename"][:8]))
        for k in ("img_info", "ann_info", "seg_fields", "img_prefix", "seg_prefix", "filename", "ori_filename", "img",
                  "img_shape", "ori_shape", "pad_shape", "scale_factor", "img_norm_cfg", "gt_semantic_seg"):
            results.setdefault(k, None)
    def pipeline_process(self, results):
        return list(self.seen)

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[4]))
from vss.modeling.tv3s.clips import release_test_clip, clip_frames
n = 40
for t in range(n):
    f = Fake(n)
    official = ns["prepare_test_img2"](f, t)
    ours = release_test_clip(t, [-9, -6, -3, 0], list(range(n)), 0)
    assert (ours or [t]) == official, (t, ours, official)
print("test clips equal for t = 0..%d" % (n - 1))
# training: the release's draws, collected
np.random.seed(0); random.seed(0)
drawn = set()
for _ in range(4000):
    f = Fake(15)
    drawn.add(tuple(ns["prepare_train_img2"](f, 0)))
ours = {tuple(clip_frames(t, [-9, -6, -3, 0], list(range(15)), rev, full_context=True))
        for rev in (False, True) for t in range(15)
        if clip_frames(t, [-9, -6, -3, 0], list(range(15)), rev, full_context=True)}
print(sorted(drawn)); assert drawn == ours, (sorted(drawn), sorted(ours))
print("training clips equal:", len(ours))
