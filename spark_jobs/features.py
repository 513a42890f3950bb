"""spark-submit entry point of the features step (code: fruits_spark.features, via --py-files)."""

from fruits_spark.features import main

if __name__ == "__main__":
    main()
