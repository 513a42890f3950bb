"""How the run's Spark executors are sized on the EMR nodes: pure arithmetic, no AWS, no Airflow.

The features step runs its model in Python workers, one per concurrent task (``spark.python.worker.reuse``
keeps them alive). Their memory lives outside the executor's JVM heap, so YARN only reserves it when the
request says so: without it a node runs as many workers as it has vCPUs, their RSS exceeds the container and
YARN kills the executor (exit 137/143). The sizes below go into the cluster request's ``spark-defaults``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from fruits_spark.contract import engine_record

# Peak RSS of one Python worker running the features UDF, per inference engine, in MB: each engine's record
# (contract.ENGINES, measured by `fruits bench`). The sizing follows whatever these say.


def python_worker_peak_mb(engine: str) -> int:
    """The engine record's measured peak of one Python worker (a registered engine's too)."""
    return engine_record(engine).worker_peak_mb


# margin over the measured peak: batch sizes and image sizes vary, glibc arenas fragment
PYTHON_MEMORY_HEADROOM = 1.25
# the executor JVM only moves Arrow batches of image bytes between Parquet and the Python workers
EXECUTOR_JVM_MB = 2048
# Spark's own overhead rule for the JVM (off-heap, thread stacks): max(384 MB, 10 % of the heap)
JVM_OVERHEAD_MIN_MB = 384
JVM_OVERHEAD_FACTOR = 0.10
# YARN memory per node (yarn.nodemanager.resource.memory-mb) that EMR 7 sets by instance size: Amazon EMR
# Management Guide, "Task configuration" defaults, the same within a family class: general-purpose
# (m5/m6i/m6g/m7g, 4 GiB a vCPU) and compute-optimised (c5/c6i/c6g/c7g, 2 GiB a vCPU; to re-check)
YARN_MEMORY_MB: dict[str, dict[str, int]] = {
    "m": {"xlarge": 12288, "2xlarge": 24576, "4xlarge": 57344},
    "c": {"xlarge": 6144, "2xlarge": 12288, "4xlarge": 24576},
}
# A single-node cluster runs the step's driver (client mode: its JVM and its Python) beside the executors,
# outside YARN: the executors' container leaves it this much of the node's YARN memory (EMR's default driver
# heap of 2 GiB, its overhead and the driver's Python process)
SINGLE_NODE_DRIVER_MB = 3072
# partitions per executor core: a few tasks per core keep every core busy when tasks differ in length
PARTITIONS_PER_CORE = 2


class SizingError(ValueError):
    """The instance type cannot hold even one Python worker of the engine: one-line reason."""


@dataclass(frozen=True)
class ExecutorSizing:
    engine: str
    instance_type: str
    executor_nodes: int
    executor_cores: int  # = Python workers per executor (one per concurrent task)
    executors_per_node: int
    python_worker_mb: int
    python_memory_mb: int
    executor_memory_mb: int
    memory_overhead_mb: int
    container_mb: int
    yarn_memory_mb: int

    @property
    def total_executor_cores(self) -> int:
        return self.executor_cores * self.executors_per_node * self.executor_nodes

    @property
    def default_parallelism(self) -> int:
        return PARTITIONS_PER_CORE * self.total_executor_cores

    def spark_defaults(self) -> dict[str, str]:
        """The cluster's spark-defaults: executor shape, and the parallelism the jobs size partitions from.

        The Python workers' memory goes into ``memoryOverhead``, not ``spark.executor.pyspark.memory``: the
        latter sets RLIMIT_AS (virtual address space) on each worker, and TensorFlow / ONNX Runtime map far
        more virtual memory than they use: they would fail to import.
        ``spark.default.parallelism`` is set because under dynamic allocation no executor exists when a job
        starts: ``defaultParallelism`` would otherwise be 2 and a small batch would run as 2 partitions.
        """
        return {
            "spark.executor.cores": str(self.executor_cores),
            "spark.executor.memory": f"{self.executor_memory_mb}m",
            "spark.executor.memoryOverhead": f"{self.memory_overhead_mb}m",
            "spark.default.parallelism": str(self.default_parallelism),
        }

    def as_dict(self) -> dict:
        return {**asdict(self), "total_executor_cores": self.total_executor_cores}


def yarn_memory_mb(instance_type: str) -> int:
    size = instance_type.split(".", 1)[-1]
    try:
        return YARN_MEMORY_MB[instance_type[:1]][size]
    except KeyError:
        known = [f"{family}*.{size}" for family, sizes in YARN_MEMORY_MB.items() for size in sizes]
        raise SizingError(f"no YARN memory figure for {instance_type} (known: {', '.join(known)})") from None


def size_executors(instance_type: str, vcpus: int, core_nodes: int, engine: str) -> ExecutorSizing:
    """One executor shape per node: as many Python workers as vCPUs, fewer if their memory does not fit."""
    try:
        worker_mb = python_worker_peak_mb(engine)
    except ValueError as error:
        raise SizingError(f"no Python worker peak: {error}") from None
    yarn_mb = yarn_memory_mb(instance_type)
    # the executors' share of it: all of a core node's; a single node's less what its driver needs
    usable_mb = yarn_mb - (SINGLE_NODE_DRIVER_MB if core_nodes == 0 else 0)
    jvm_overhead = max(JVM_OVERHEAD_MIN_MB, math.ceil(JVM_OVERHEAD_FACTOR * EXECUTOR_JVM_MB))
    for cores in range(vcpus, 0, -1):
        python_mb = math.ceil(cores * worker_mb * PYTHON_MEMORY_HEADROOM)
        container = EXECUTOR_JVM_MB + jvm_overhead + python_mb
        if container <= usable_mb:
            break
    else:
        raise SizingError(
            f"{instance_type}: one {engine} Python worker ({worker_mb} MB x {PYTHON_MEMORY_HEADROOM}) "
            f"plus the executor JVM does not fit in the node's {usable_mb} MB of YARN memory"
            + (" left by the driver of a single-node cluster" if core_nodes == 0 else "")
        )
    # YARN's default resource calculator counts memory only: never more task slots than vCPUs per node
    per_node = max(1, min(usable_mb // container, vcpus // cores))
    return ExecutorSizing(
        engine=engine,
        instance_type=instance_type,
        executor_nodes=max(core_nodes, 1),  # a single-node cluster runs its executors on the primary
        executor_cores=cores,
        executors_per_node=per_node,
        python_worker_mb=worker_mb,
        python_memory_mb=python_mb,
        executor_memory_mb=EXECUTOR_JVM_MB,
        memory_overhead_mb=jvm_overhead + python_mb,
        container_mb=container,
        yarn_memory_mb=yarn_mb,
    )
