"""spark-submit entry point of the pca step; the code is fruits_spark.pca, shipped with --py-files."""

from fruits_spark.pca import main

if __name__ == "__main__":
    main()
