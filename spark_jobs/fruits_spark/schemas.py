"""The columns of every Parquet dataset, declared once: name, Glue (Hive) type and what it holds.

Three things follow this declaration and are tested against it: what the steps write (a real run's
Parquet, tests/test_catalog.py), the catalog tables of infra/fruits-infra.yaml (their columns are written
out in the template, which CloudFormation deploys as it is, and a test compares them with ``glue_columns``)
and the README's Outputs table. The steps themselves build their frames from their own code: a column
added there and not here fails the Parquet test, not a consumer.

``dt`` is the partition of every dataset (the ``dt=`` folder), never a column of its files. ``pca_csv`` is
the PCA matrix as one CSV file (``path,label,pc_1..pc_k``), not a table. Pure Python: the platform's side
(tests, docs) imports it without Spark.
"""

from __future__ import annotations

from dataclasses import dataclass

# The Glue database the template creates (infra/fruits-infra.yaml, parameter GlueDatabaseName's default):
# Athena, awswrangler and Spark on EMR name the tables <database>.<dataset>
CATALOG_DATABASE = "fruits"
PARTITION = "dt"


@dataclass(frozen=True)
class Column:
    name: str
    # the Glue/Hive type: string, int, double, binary, array<float>
    type: str
    comment: str


_PATH = Column("path", "string", "the uploaded file's full URI")
_LABEL = Column("label", "string", "the upload's folder: the fruit it was filed under")
_HASH = Column("content_hash", "string", "SHA-256 of the original bytes")
_EMBEDDING = Column("embedding", "string", "the feature space: weights digest and model input size")

SCHEMAS: dict[str, tuple[Column, ...]] = {
    "images": (
        _PATH,
        _LABEL,
        _HASH,
        Column("width", "int", "the original's width in pixels, as displayed"),
        Column("height", "int", "the original's height in pixels, as displayed"),
        Column("content", "binary", "raw RGB pixels as a binary PPM, at most 224 px a side, no metadata"),
    ),
    "features": (
        _PATH,
        _LABEL,
        _HASH,
        Column("features", "array<float>", "the MobileNetV2 embedding: 1280 floats"),
        _EMBEDDING,
    ),
    "features_index": (_HASH, _EMBEDDING),
    "near_duplicates": (
        _PATH,
        _LABEL,
        Column("other_path", "string", "the other photo of the pair"),
        Column("other_label", "string", "the other photo's label"),
        Column("similarity", "double", "cosine similarity of the two embeddings"),
        Column("other_dt", "string", "the other photo's day: this day, or the earliest earlier day seen"),
    ),
    "label_audit": (
        _PATH,
        _LABEL,
        Column("nearest_label", "string", "the label whose centroid is nearest to the photo"),
        Column("margin", "double", "cosine to nearest_label minus cosine to its own label (photo left out)"),
    ),
    "pca": (
        _PATH,
        _LABEL,
        Column("pca", "array<float>", "the first k components; fewer when the fit's rank is below k"),
        Column("pca_model_version", "string", "the applied model's v=... folder, or provisional"),
    ),
    "rejected": (
        _PATH,
        Column("reason", "string", "why the file was not used"),
        Column("detail", "string", "the reason's detail (size, decoder error, the path it repeats)"),
    ),
    "ignored": (_PATH, Column("reason", "string", "hidden, or not an image name")),
}
# The datasets with a catalog table: what a data scientist queries. features_index is the reuse lookup's,
# rejected and ignored are for whoever runs the pipeline (rejected has a second partition, stage=).
CATALOG_TABLES = ("images", "features", "pca", "near_duplicates", "label_audit")
# pca_csv: one CSV file per day (pca.CSV_NAME), the matrix for tools outside Spark
NOT_PARQUET = ("pca_csv",)


def glue_columns(dataset: str) -> list[dict[str, str]]:
    """The dataset's columns as Glue's TableInput.StorageDescriptor.Columns (and the template's)."""
    return [{"Name": c.name, "Type": c.type, "Comment": c.comment} for c in SCHEMAS[dataset]]


def ddl(dataset: str) -> str:
    """The columns as a Hive/Spark DDL string, e.g. ``path string, label string``."""
    return ", ".join(f"{c.name} {c.type}" for c in SCHEMAS[dataset])
