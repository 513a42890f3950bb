"""spark-submit entry point of the ingest step; the code is fruits_spark.ingest, shipped with --py-files."""

from fruits_spark.ingest import main

if __name__ == "__main__":
    main()
