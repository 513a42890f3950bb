"""The features step's inference engines, one module each, declared as records in ``contract.ENGINES``.

Each module has ``prepare(spark, args) -> (broadcast model, weights digest)`` (the driver) and
``build(value, input_size, threads) -> infer`` (once per Python worker, on the broadcast value).
"""
