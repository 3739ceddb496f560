"""Conveyor: a production image/text classification pipeline on TFX.

This file is also what Beam workers (Dataflow, Flink, Spark) install via
`--setup_file ./setup.py`, so it packages every code folder the DAG imports.
"""
from setuptools import setup

setup(
    name="conveyor",
    version="0.1.0",
    description="TFX pipeline that trains, validates and serves image and text classifiers",
    python_requires=">=3.9,<3.11",
    packages=[
        "conveyor",
        "conveyor.metadata",
        "conveyor.ui",
        "pipelines",
        "components",
        "modules",
        "data",
        "serving",
        "kubeflow",
    ],
    package_data={"conveyor.ui": ["templates/*.html"]},
    install_requires=[
        "tfx==1.16.0",
        "tensorflow==2.16.2",
        "tensorflow-transform==1.16.0",
        "tensorflow-data-validation==1.16.1",
        "tensorflow-model-analysis==0.47.1",
        "ml-metadata==1.16.0",
        "apache-beam[gcp]==2.60.0",
        "tensorflow-serving-api==2.16.1",
        "tf-keras==2.16.0",  # the models are tf_keras (README "Scaling training")
        "pillow",
        "pyyaml",
        "pydantic>=2,<3",
        "scikit-learn",
        "flask>=2.2,<3",  # conveyor ui
        "pymysql>=1.1,<2",  # conveyor metadata copy (SQLite -> MySQL)
    ],
    entry_points={"console_scripts": [
        "conveyor=conveyor.cli:main",
        # The same server under TF Serving's binary name, so TF Serving command lines run unedited.
        "tensorflow_model_server=serving.server:tensorflow_model_server",
    ]},
)
