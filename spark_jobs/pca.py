"""spark-submit entry point for the pca step; its code lives in fruits_spark.pca (shipped with --py-files)."""

from fruits_spark.pca import main

if __name__ == "__main__":
    main()
