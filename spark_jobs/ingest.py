"""spark-submit entry point for the ingest step; its code lives in fruits_spark.ingest (shipped with --py-files)."""

from fruits_spark.ingest import main

if __name__ == "__main__":
    main()
