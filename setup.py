from setuptools import find_packages, setup

PLOTS = ["scikit-learn>=1.3,<2"]   # t-SNE embedding maps; optional (the default map is PCA, with matplotlib)

setup(
    name="ssl_tf",
    version="0.1.0",
    description="Self-supervised visual representation learning with Keras 3 and TensorFlow",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=["ssl_tf", "ssl_tf.*"]),
    install_requires=[
        "tensorflow>=2.16,<2.22",
        "keras>=3.0,<4",
        "tensorboard>=2.16,<2.22",  # tf.summary needs it; tensorflow 2.21 no longer depends on it
        "tensorflow-datasets>=4.9,<5",
        "importlib_resources>=5",   # needed by tensorflow-datasets 4.9.10 and not declared by it
        "absl-py>=1.0,<3",
        "numpy>=1.23,<3",
        "pillow>=9,<14",
        "matplotlib>=3.7,<4",       # the run's pictures: training curves and embedding maps
    ],
    extras_require={
        "plots": PLOTS,
        # the tests also check the plots; ruff: CI's lint; xdist: pytest.ini runs the suite on 2 processes
        "test": ["pytest>=7,<10", "pytest-xdist>=3,<4", "ruff>=0.6,<1"] + PLOTS,
    },
    entry_points={"console_scripts": ["ssl-tf=ssl_tf.cli:run"]},
)
