"""A toy step and a toy engine, each one record (``records``) plus one module, registered by the tests."""
