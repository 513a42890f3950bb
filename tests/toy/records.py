"""The toy records: a plugin module (``contract.load_plugins("tests.toy.records")``). Nothing else of the
product is edited to add them."""

from fruits_spark.contract import Engine, RunParam, Step, register_engine, register_step

register_step(
    Step(
        "toy",
        "tests.toy.step",
        core_seconds_per_image=0.001,
        params=(
            RunParam(
                "toy_min_rows",
                int,
                1,
                "Toy: rows a label needs",
                "labels with fewer features rows than this are left out of the toy dataset",
                minimum=1,
                maximum=1000,
            ),
        ),
        datasets=("toy",),
        counts=("toy_labels",),
    ),
    after="features",
)
register_engine(
    Engine(
        "toy",
        "tests.toy.engine",
        "a toy: each image's mean colour through a fixed projection",
        requirements="requirements-emr.txt",
        worker_peak_mb=3000,
        needs_tensorflow=False,
        artifact="toy_projection.npy",
    )
)
