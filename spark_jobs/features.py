"""spark-submit entry point for the features step; its code lives in fruits_spark.features (shipped with --py-files)."""

from fruits_spark.features import main

if __name__ == "__main__":
    main()
