# Checks vss.data.augment against the TV3S release's own resize code (mmcv's geometric module and the
# release's Resize / AlignedResize_clips methods, taken from the checkout and run, not copied):
# python check_tv3s_resize.py <TV3S checkout>.
import ast, sys, types
OFFICIAL = sys.argv[1] if len(sys.argv) > 1 else "/work/official/TV3S"
import numpy as np
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[4]))
src = open(OFFICIAL + "/3rdparty/mmcv/mmcv/image/geometric.py").read().replace("from .io import imread_backend", "imread_backend = 'cv2'")
geo = types.ModuleType("geo"); exec(compile(src, "geometric.py", "exec"), geo.__dict__)
mmcv = types.SimpleNamespace(imrescale=geo.imrescale, imresize=geo.imresize)
tsrc = open(OFFICIAL + "/utils/datasets/transforms.py").read()
tree = ast.parse(tsrc)
classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
ns = {"np": np, "mmcv": mmcv}
def methods(cls, names):
    out = {}
    for f in classes[cls].body:
        if isinstance(f, ast.FunctionDef) and f.name in names:
            f.decorator_list = []
            exec(compile(ast.Module(body=[f], type_ignores=[]), "t.py", "exec"), ns)
            out[f.name] = ns[f.name]
    return out
al = methods("AlignedResize_clips", ["_align", "_resize_img"])
rs = methods("Resize", ["random_sample_ratio", "_resize_img_clips"])
from vss.data.augment import AlignedResize, RatioRangeResize
from detectron2.data import transforms as T
rng = np.random.RandomState(0)
for h, w in [(480, 853), (500, 1200), (480, 640), (1024, 2048), (360, 1400), (720, 1280)]:
    img = rng.randint(0, 256, (h, w, 3)).astype(np.uint8)
    res = {"img": [img], "scale": (853, 480)}
    self = types.SimpleNamespace(keep_ratio=True, size_divisor=32, _align=lambda im, d, interpolation=None: al["_align"](None, im, d, interpolation))
    al["_resize_img"](self, res)
    ours = AlignedResize(480, 853, 32).get_transform(img).apply_image(img)
    assert ours.shape == res["img"][0].shape and np.array_equal(ours, res["img"][0]), (h, w, ours.shape, res["img"][0].shape)
    for seed in range(20):
        np.random.seed(seed)
        scale, _ = rs["random_sample_ratio"]((853, 480), (0.5, 2.0))
        res = {"img": [img], "scale": scale}
        rs["_resize_img_clips"](types.SimpleNamespace(keep_ratio=True), res)
        np.random.seed(seed)
        ours = RatioRangeResize((853, 480), (0.5, 2.0)).get_transform(img).apply_image(img)
        assert np.array_equal(ours, res["img"][0]), (h, w, seed)
    print(h, w, "test ->", AlignedResize(480, 853, 32).get_transform(img).transforms[-1].new_h, "x",
          AlignedResize(480, 853, 32).get_transform(img).transforms[-1].new_w, "equal")
print("release resize equal")
