"""Tests of the orders app: `python manage.py test` (the browser test: `--tag browser`).

They use the project's settings, so set SHOP_VAR_DIR to a folder of their own when a
development worker is running on var/ (it would take the tests' messages).
"""
