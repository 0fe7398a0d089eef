"""The test suite: folders mirror the code (tests/README.md lists them); shared helpers in
``tests/support/``, fixtures in the ``conftest.py`` files."""
