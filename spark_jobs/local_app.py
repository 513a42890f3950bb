"""spark-submit entry point of local runs: several steps in one Spark application (fruits_spark.local_app)."""

import sys

from fruits_spark.local_app import main

if __name__ == "__main__":
    sys.exit(main())
