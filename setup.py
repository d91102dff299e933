from setuptools import find_packages, setup

setup(
    name="vss",
    version="0.1.0",
    description="Efficient video semantic segmentation (MPVSS, TV3S) on detectron2",
    python_requires=">=3.10",
    packages=find_packages(include=["vss", "vss.*"]),
    package_data={"vss": ["data/datasets/*.json"]},
    # detectron2 is a dependency too, but it is not on the package registry under its
    # own name: tools/install.sh builds it (see README, "Install").
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "fvcore>=0.1.5",
        "pycocotools>=2.0.6",
        "opencv-python-headless>=4.8",
        "numpy>=2.0",
        "scipy>=1.11",
        "tqdm>=4.65",
        "matplotlib>=3.7",
        "Pillow>=10",
    ],
    extras_require={
        # CUDA kernels for the TV3S scan; pure-PyTorch paths are used without them.
        "mamba": ["mamba-ssm>=2.2", "causal-conv1d>=1.4"],
        "test": ["pytest>=7"],
    },
)
